"""Fault injection for the exactly-once tests: kill a process at a named point.

Off unless COMBINER_FAULT is set, e.g. COMBINER_FAULT="driver_after_commit:2" (the
driver SIGKILLs itself right after its 2nd commit), "driver_before_manifest:1" (after
the data files of the 1st commit are in place, before its manifest: a crash in the
middle of writing), or "worker_batch:3:/tmp/marker" (a generation actor SIGKILLs its
own process on its 3rd batch, once: the marker file makes the restarted actor go on).
A real SIGKILL, as the OOM killer or a lost node would deliver, not an exception.
"worker_pause:2:/tmp/marker" makes a generation actor stop on its 2nd batch, once,
after writing its node id to the marker: a test then takes that node away while
the batch is in flight, deterministically. "worker_wait:1:/tmp/marker" makes an actor
create the marker on its 1st batch and wait until "/tmp/marker.go" exists: a test
then acts on a job known to be mid-run, and lets it finish.
"train_after_checkpoint:4:/tmp/marker" makes fine-tuning's rank 0 stop right after the
checkpoint of step 4 is reported, once: a test then kills the driver or the worker at
a known point instead of racing the training loop.
"model_rows:<id>,<id>" makes the model stage raise for any model call whose rows include
one of those row ids (every time, in every actor): a row the model cannot process.
Several faults at once are separated by ';', e.g. "model_rows:a;driver_after_commit:2".
"""

from __future__ import annotations

import os
import signal
import time

ENV = "COMBINER_FAULT"


class InjectedFault(RuntimeError):
    """The failure a test asked for (model_rows)."""


def _spec(point: str) -> list[str]:
    """The fault entry naming `point` ([point, count, marker...]), or []."""
    for entry in os.environ.get(ENV, "").split(";"):
        parts = entry.split(":")
        if parts[0] == point:
            return parts
    return []


def active() -> bool:
    return bool(os.environ.get(ENV))


def _claim(marker: str, text: str) -> bool:
    """Create `marker` holding `text`, once across processes; False if it exists."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, text.encode())
    os.close(fd)
    return True


def maybe_pause(point: str, count: int, node_id: str) -> None:
    """Block forever (until the process dies) if COMBINER_FAULT names `point` with this `count`."""
    spec = _spec(point)
    if len(spec) < 3 or int(spec[1]) != count:
        return
    if _claim(":".join(spec[2:]), node_id):
        while True:
            time.sleep(3600)


def maybe_wait(point: str, count: int) -> None:
    """If COMBINER_FAULT names `point` with this `count`: signal (create the marker), then
    wait for the test's go file. Polls a file the test writes: an event, not a deadline."""
    spec = _spec(point)
    if len(spec) < 3 or int(spec[1]) != count:
        return
    marker = ":".join(spec[2:])
    if _claim(marker, str(os.getpid())):
        while not os.path.exists(marker + ".go"):
            time.sleep(0.05)


def maybe_kill(point: str, count: int) -> None:
    """SIGKILL this process if COMBINER_FAULT names `point` with this `count`."""
    spec = _spec(point)
    if len(spec) < 2 or int(spec[1]) != count:
        return
    if len(spec) >= 3 and not _claim(":".join(spec[2:]), str(os.getpid())):
        return  # already fired once
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_fail_rows(point: str, row_ids: list[str]) -> None:
    """Raise InjectedFault if COMBINER_FAULT names `point` with one of `row_ids`."""
    spec = _spec(point)
    if len(spec) < 2:
        return
    chosen = set(":".join(spec[1:]).split(","))
    hit = sorted(chosen.intersection(row_ids))
    if hit:
        raise InjectedFault(f"injected model failure for row(s) {hit}")
