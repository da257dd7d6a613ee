"""Argument parsing shared by the job scripts in jobs/."""

from __future__ import annotations

import argparse


def job_arg_parser(description: str, *, example_set: str = "output.mode=resume") -> argparse.ArgumentParser:
    """--spec FILE and repeatable --set KEY=VALUE, as every job takes them.

    `example_set` is a --set this job accepts, shown in the help.
    """
    parser = argparse.ArgumentParser(description=description)
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
        "--validate-only", action="store_true", help="validate the spec, print it, and exit without running"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray Data's progress display even when output is not a terminal"
    )
    return parser
