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
exit codes: 0 done; 1 the job stopped before it finished (a model that would not load on the
workers, a crash): what was committed stays, rerun with output.mode=resume; 2 fix the spec,
the input or the output location (nothing was written, or another run holds the output);
3 the run finished, but more rows went to _errors than output.max_error_rate allows (what
succeeded is committed; no _SUCCESS is written); 130 interrupted (Ctrl-C): what was committed
stays, rerun with output.mode=resume."""
EXIT_OK, EXIT_FIX_SPEC, EXIT_TOO_MANY_ERRORS = 0, 2, 3  # and 1: JobStoppedError.exit_code
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def _show_library_logs() -> None:
    """INFO lines of our own libraries on stderr, plain; other libraries keep their levels."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("pipelines", "combiner_core"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


# Keys whose value belongs to another key's (load_spec's unset_with): a mode chosen for
# one output is not carried to another output given with --set; the bundled sample's
# columns belong to its Parquet files, not to an input.format given with --set.
BOUND_KEYS = {"output.uri": ["output.mode"]}
DEFAULT_BOUND_KEYS = {**BOUND_KEYS,
                      "input.format": ["input.input_column", "input.id_column", "input.reference_column"]}


def generation_main(
    spec_type: type, description: str, argv: list[str] | None, *, default: Mapping[str, Any] | None = None
) -> int:
    """Run one generation job from the command line; returns the exit code."""
    from pipelines import (
        JobError,
        SpecError,
        absolute_spec_paths,
        init_ray,
        job_arg_parser,
        load_spec,
        spec_yaml,
    )

    args = job_arg_parser(description, exit_codes=EXIT_CODES).parse_args(argv)
    _show_library_logs()
    bound = DEFAULT_BOUND_KEYS if args.spec is None else BOUND_KEYS
    try:
        spec = load_spec(spec_type, args.spec, args.overrides, default=default, unset_with=bound).resolved()
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FIX_SPEC
    if args.print_spec:
        name = sys.argv[0].rsplit("/", 1)[-1] if argv is None else "this job"
        print(spec_yaml(absolute_spec_paths(spec), header=f"{description}\nA spec for {name}: save it, edit it, run it "
                        "with --spec FILE. Relative paths in it are relative to the file's folder."), end="")
        return EXIT_OK
    from combiner_core.errors import CombinerError
    from pipelines.generation import format_summary, preflight, run_plan

    source = (args.spec or "the built-in default spec") + (" with --set " + " ".join(args.overrides)
                                                            if args.overrides else "")
    out_uri = spec.output.uri  # the plan's absolute form once preflight made it
    try:
        checked = preflight(spec, source=source)
        out_uri = checked.plan.output_uri
        if args.validate_only:
            for line in checked.checked:
                print(f"checked: {line}")
            return EXIT_OK
        summary = run_plan(checked.plan, listing=checked.listing,
                           ray_init=functools.partial(init_ray, verbose=args.verbose), verbose=args.verbose)
    except JobError as exc:
        print(exc if isinstance(exc, SpecError) else f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except CombinerError as exc:  # storage refused (credentials), a checkpoint that will not load
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FIX_SPEC
    except KeyboardInterrupt:
        # Ctrl-C (or SIGINT from a scheduler): the shards committed so far are whole and
        # stay; the run's lease and staging were released on the way out (run_plan).
        print(f"interrupted: the shards committed so far are kept in {out_uri}; run the same "
              "command with --set output.mode=resume to do the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(summary), flush=True)
    return EXIT_TOO_MANY_ERRORS if summary.failed else EXIT_OK
