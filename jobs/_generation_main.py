"""The main() every generation job script shares: parse, validate, run, print a summary.

Imported by jobs/caption_dataset.py, summarize_corpus.py and label_dataset.py (not a
library module: it prints, and it owns the exit codes below).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Mapping
from typing import Any

EXIT_CODES = """\
exit codes: 0 done; 2 fix the spec, the input or the output location (nothing was written,
or another run holds the output); 3 the run finished, but more rows went to _errors than
output.max_error_rate allows (what succeeded is committed; no _SUCCESS is written)."""
EXIT_OK, EXIT_FIX_SPEC, EXIT_TOO_MANY_ERRORS = 0, 2, 3


def _show_library_logs() -> None:
    """INFO lines of our own libraries on stderr, plain; other libraries keep their levels."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("pipelines", "combiner_core"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def default_for(default: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The built-in default spec, less its output.mode when --set moves output.uri.

    The default overwrites its own sample output on every run; a user who points
    output.uri elsewhere (maybe at a folder that holds results) gets the field's own
    default, error_if_exists, unless they set output.mode too.
    """
    from pipelines import parse_overrides

    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in default.items()}
    output = parse_overrides(overrides).get("output") or {}
    if isinstance(output, Mapping) and "uri" in output and "mode" not in output:
        data.get("output", {}).pop("mode", None)
    return data


def generation_main(
    spec_type: type, description: str, argv: list[str] | None, *, default: Mapping[str, Any] | None = None
) -> int:
    """Run one generation job from the command line; returns the exit code."""
    from pipelines import SpecError, init_ray, job_arg_parser, load_spec, spec_yaml

    args = job_arg_parser(description, exit_codes=EXIT_CODES).parse_args(argv)
    _show_library_logs()
    try:
        default_spec = default_for(default, args.overrides) if default is not None and args.spec is None else default
        spec = load_spec(spec_type, args.spec, args.overrides, default=default_spec).resolved()
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FIX_SPEC
    if args.print_spec:
        name = sys.argv[0].rsplit("/", 1)[-1] if argv is None else "this job"
        print(spec_yaml(spec, header=f"{description}\nA spec for {name}: save it, edit it, run it with "
                                     f"--spec FILE. Relative paths are relative to the file's folder."), end="")
        return EXIT_OK
    from combiner_core.storage import StorageAccessError
    from pipelines.generation import (
        LeaseLostError,
        OutputExistsError,
        OutputLeasedError,
        format_summary,
        preflight,
        run_plan,
    )

    try:
        checked = preflight(spec, source=args.spec or "the built-in default spec")
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FIX_SPEC
    if args.validate_only:
        for line in checked.checked:
            print(f"checked: {line}")
        return EXIT_OK
    try:
        summary = run_plan(checked.plan, listing=checked.listing,
                           ray_init=functools.partial(init_ray, verbose=args.verbose), verbose=args.verbose)
    except (OutputExistsError, OutputLeasedError, LeaseLostError, StorageAccessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FIX_SPEC
    print(format_summary(summary), flush=True)
    return EXIT_TOO_MANY_ERRORS if summary.failed else EXIT_OK
