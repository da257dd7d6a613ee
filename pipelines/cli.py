"""Argument parsing shared by the job scripts in jobs/."""

from __future__ import annotations

import argparse

_EPILOG = """\
A job is a YAML spec. --print-spec prints this job's whole spec as commented YAML (every
key, its value and default, and what it does): save it, edit it, pass it with --spec.
Relative local paths in a spec file are relative to that file's folder; --set values are
relative to the current folder. Examples: jobs/specs/*.yaml; the README's "Generation
jobs" and "Fine-tuning" sections say what each key does and what a job writes.
"""


def job_arg_parser(
    description: str, *, example_set: str = "output.mode=resume", exit_codes: str = ""
) -> argparse.ArgumentParser:
    """--spec FILE, repeatable --set KEY=VALUE, --validate-only, --print-spec, --verbose.

    `example_set` is a --set this job accepts, shown in the help; `exit_codes` the
    job's exit codes, shown after the spec help.
    """
    parser = argparse.ArgumentParser(
        description=description, epilog=_EPILOG + (f"\n{exit_codes}" if exit_codes else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--spec", help="YAML job spec; without it the job's built-in default runs")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a spec key, dotted (e.g. --set {example_set}); repeatable; values are YAML",
    )
    parser.add_argument(
        "--validate-only", action="store_true",
        help="check the spec, the model, the input and the output as a run would, print what was "
        "checked, and exit without writing anything",
    )
    parser.add_argument(
        "--print-spec", action="store_true",
        help="print the spec this run would use (the built-in default, or --spec, with --set applied) "
        "as commented YAML with every key, and exit",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray Data's progress display even when output is not a terminal"
    )
    return parser
