"""One writer per output: a lease file that a running driver renews.

    output.uri/_lease.json   {run_id, host, pid, started, ttl_s}

A driver takes the lease before it touches the output (output.mode=overwrite deletes
it), renews it from a background thread every ttl/4 seconds, checks it before each
commit, and deletes it when it ends. Another driver that finds a live lease is
refused with the owner's run id. A lease is dead when it was not renewed for ttl
seconds (its modification time, taken from the store's clock, not the writer's), or
at once when its owner was a process on this host that no longer runs: a driver
killed here does not block the `resume` that follows.

Object stores have no locks and no rename, so taking a lease is write-then-read: two
drivers that start together both write, the last write wins, and the loser sees
another run id when it reads back (or, at the latest, before its first commit) and
stops. Nothing is committed twice: shard commits are idempotent (see store.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec

from ...errors import JobError

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
# 60 s: renewed every 15 s, so a driver stalled for a few seconds (a long commit, GC)
# keeps its lease, and a driver lost with its host frees the output within a minute.
DEFAULT_TTL_S = 60.0
_TTL_ENV = "COMBINER_LEASE_TTL_S"


class OutputLeasedError(JobError, RuntimeError):
    """Another driver is writing this output."""


class LeaseLostError(JobError, RuntimeError):
    """This driver's lease was taken over (it stalled past the TTL); it must stop."""


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    host: str
    pid: int
    started: str
    ttl_s: float
    process_start: str = ""  # /proc start time: a reused pid is not mistaken for the owner


def _process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive_here(record: LeaseRecord) -> bool | None:
    """Whether the owner process still runs, when it ran on this host; None otherwise."""
    if record.host != socket.gethostname():
        return None
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not record.process_start or _process_start(record.pid) == record.process_start


class Lease:
    """The lease on one output folder (see the module docstring)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, uri: str, *, run_id: str) -> None:
        self.fs, self.path, self.uri = fs, f"{root}/{LEASE_FILE}", uri
        self.ttl_s = float(os.environ.get(_TTL_ENV) or DEFAULT_TTL_S)
        self.record = LeaseRecord(
            run_id=run_id, host=socket.gethostname(), pid=os.getpid(),
            started=datetime.now(UTC).isoformat(timespec="seconds"), ttl_s=self.ttl_s,
            process_start=_process_start(os.getpid()),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # --- reading ------------------------------------------------------------------------

    def _read(self) -> tuple[LeaseRecord | None, float | None]:
        """The lease on the store and its age in seconds (by the store's clock)."""
        try:
            with self.fs.open(self.path, "r") as fh:
                data: dict[str, Any] = json.load(fh)
            modified = self.fs.modified(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except (ValueError, TypeError):
            return None, None  # a torn or foreign file: treat as no lease
        if modified.tzinfo is None:
            age = time.time() - modified.timestamp()
        else:
            age = (datetime.now(UTC) - modified).total_seconds()
        known = {k: data[k] for k in LeaseRecord.__dataclass_fields__ if k in data}
        try:
            return LeaseRecord(**known), age
        except TypeError:
            return None, None

    def _write(self) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(self.path, "w") as fh:
            fh.write(json.dumps(asdict(self.record), indent=2))

    def _describe(self, other: LeaseRecord, age: float) -> str:
        return (
            f"output.uri {self.uri} is being written by run {other.run_id} (host {other.host}, pid "
            f"{other.pid}, started {other.started}, renewed {age:.0f}s ago). Wait for it to finish; if "
            f"that driver is gone, its lease expires {max(0.0, other.ttl_s - age):.0f}s from now and "
            "output.mode=resume then continues its work"
        )

    # --- the lease's life -----------------------------------------------------------------

    def _other(self) -> tuple[LeaseRecord | None, float, bool]:
        """Another run's lease on the store (or None), its age, and whether it is live."""
        other, age = self._read()
        if other is None or other.run_id == self.record.run_id:
            return None, 0.0, False
        alive = _alive_here(other)
        return other, age or 0.0, bool(alive or (alive is None and age is not None and age < other.ttl_s))

    def held_by_another(self) -> str | None:
        """Who else holds a live lease on this output, in words (None: nobody)."""
        other, age, live = self._other()
        return self._describe(other, age) if other is not None and live else None

    def acquire(self) -> None:
        """Take the lease or raise OutputLeasedError naming the owner; then keep it renewed."""
        other, age, live = self._other()
        if other is not None:
            if live:
                raise OutputLeasedError(self._describe(other, age))
            log.warning("output.uri %s: taking over the lease of run %s (%s)", self.uri, other.run_id,
                        "its driver is gone" if _alive_here(other) is False else f"not renewed for {age:.0f}s")
        self._write()
        self.check()  # two drivers that wrote at once: the last write won
        self._thread = threading.Thread(target=self._renew_loop, name="output-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise if another driver holds the lease now (called before every commit)."""
        if self._lost is None:
            other, age = self._read()
            if other is None or other.run_id != self.record.run_id:
                self._lost = (
                    self._describe(other, age or 0.0) if other else f"the lease file {self.path} is gone"
                )
        if self._lost is not None:
            raise LeaseLostError(
                f"this run ({self.record.run_id}) lost its lease on output.uri {self.uri}: {self._lost}. "
                "It stopped before committing more; rerun with output.mode=resume when the other run ends"
            )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.check()
                self._write()
            except LeaseLostError:
                return
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried next period
                log.warning("output.uri %s: renewing the lease failed (%s); retrying", self.uri, exc)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        other, _ = self._read()
        if other is not None and other.run_id == self.record.run_id:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass
