"""The main() every generation job script shares: parse, validate, run, print a summary.

Imported by jobs/caption_dataset.py and jobs/summarize_corpus.py (not a library
module: it prints, and it owns the exit codes: 0 done, 2 a problem the user fixes).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Mapping
from typing import Any


def _show_library_logs() -> None:
    """INFO lines of our own libraries on stderr, plain; other libraries keep their levels."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("pipelines", "combiner_core"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def generation_main(
    spec_class: str, description: str, argv: list[str] | None, *, default: Mapping[str, Any] | None = None
) -> int:
    """Run one generation job from the command line; returns the exit code.

    `spec_class` names the job spec in pipelines.generation; it is imported after the
    arguments are parsed, so --help answers at once.
    """
    from combiner_core.storage import StorageAccessError
    from pipelines import SpecError, init_ray, job_arg_parser, load_spec

    args = job_arg_parser(description).parse_args(argv)
    _show_library_logs()
    import pipelines.generation

    spec_type = getattr(pipelines.generation, spec_class)
    try:
        spec = load_spec(spec_type, args.spec, args.overrides, default=default).resolved()
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    from pipelines.generation import (
        InputSpecError,
        LeaseLostError,
        ModelSpecError,
        OutputExistsError,
        OutputLeasedError,
        format_summary,
        preflight,
        run_job,
    )

    if args.validate_only:
        print(spec.model_dump_json(indent=2))
        try:
            for line in preflight(spec):
                print(f"checked: {line}")
        except (ModelSpecError, InputSpecError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0

    try:
        summary = run_job(spec, ray_init=functools.partial(init_ray, verbose=args.verbose), verbose=args.verbose)
    except (OutputExistsError, OutputLeasedError, LeaseLostError, ModelSpecError, InputSpecError,
            StorageAccessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary), flush=True)
    return 0
