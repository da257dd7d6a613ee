"""Argument parsing shared by the job scripts in jobs/."""

from __future__ import annotations

import argparse


def job_arg_parser(description: str) -> argparse.ArgumentParser:
    """--spec FILE and repeatable --set KEY=VALUE, as every job takes them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", help="YAML job spec; without it the job's built-in default runs")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, dotted (e.g. --set output.mode=resume); repeatable; values are YAML",
    )
    parser.add_argument(
        "--validate-only", action="store_true", help="validate the spec, print it, and exit without running"
    )
    return parser
