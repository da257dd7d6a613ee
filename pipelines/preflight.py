"""The one preflight contract every job kind follows.

`preflight(spec, *, source)` runs on the driver before anything is started or written,
collects every problem (each naming its YAML key) and raises them once as
PreflightError (a SpecError: jobs exit 2); otherwise it returns a Preflight: the plan
the job runs from (the spec resolved, frozen) and one line per check that passed
(`--validate-only` prints them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from .specs import SpecError

P = TypeVar("P")


class PreflightError(SpecError):
    """The job cannot run as specified: every problem found before anything was written
    (model, input, output), one 'key: message' line each. Jobs exit 2 on it."""

    headline = "cannot run {source}; nothing was written"


@dataclass(frozen=True)
class Preflight(Generic[P]):
    """What the driver learned before writing anything: the plan, and one line per check
    that passed."""

    plan: P
    checked: list[str]
