"""The one base of the errors a job's user fixes (or waits out): a job script catches
JobError and exits with its exit_code; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class JobError(Exception):
    """A spec, input or output problem, or a job that stopped; `exit_code` is the job's."""

    exit_code = 2  # fix the spec, the input or the output location
