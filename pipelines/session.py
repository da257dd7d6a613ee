"""Starting or joining Ray, the same way for every job."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Ray Data joins what a map task yields into blocks of up to DataContext's
# target_max_block_size (128 MiB by default) before passing any of it on. Our read
# tasks yield one batch of model inputs at a time (a few MB of pixels, ~100 KB of token
# ids), so at 128 MiB the model stage saw nothing until a read task had produced that
# much: measured, a 265 MB JSONL corpus of 190-byte rows had no commit after 100 s while
# its read worker's heap grew ~2.5 MB/s (the block being built), and 220 photos reached
# the model as one 220-row block. At 4 MiB a block leaves with every batch of photos or
# every ~9,000 short texts, and stays above Ray's 100 KiB inline limit, so blocks live
# in the object store, where Ray Data counts them, backpressures and spills.
BLOCK_BYTES = 4 * 1024**2


def shape_blocks() -> None:
    """Blocks of BLOCK_BYTES for the datasets this process builds from now on."""
    import ray.data

    ray.data.DataContext.get_current().target_max_block_size = BLOCK_BYTES


def init_ray(*, verbose: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS (`ray job submit` sets it) or start a private local Ray.

    Without RAY_ADDRESS a job never joins whichever local cluster another process
    happens to run (`ray.init()`'s default), so a laptop run is self-contained. Its
    workers inherit the driver's environment (Ray starts its processes with a copy of
    it), so storage settings (AWS_*), HF_HUB_OFFLINE and COMBINER_CACHE_DIR reach them
    with no runtime_env: a runtime_env would keep the workers Ray starts ahead of time
    from serving this job, and cost each job seconds. A job that joins a cluster
    leaves the environment to it: under `ray job submit` the job's own runtime_env
    already reaches every worker.

    Quiet unless `verbose`: Ray's INFO lines (start-up, Ray Data's execution plan) and
    the token-auth notice of a private instance are left out; warnings stay.
    """
    import ray

    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    if not starts_private_ray():
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=level)
        return
    if not verbose:
        # "Token authentication is enabled for this Ray cluster": true of every private
        # instance (Ray 2.60's default), and nothing a job's user acts on.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # A private instance lives for one job: no dashboard (its processes cost seconds of
    # start-up on every run; start a cluster with `ray start --head` and set RAY_ADDRESS
    # to watch one).
    ray.init(address="local", include_dashboard=False, logging_level=level)


def starts_private_ray() -> bool:
    """Whether init_ray would start a private local Ray here: no RAY_ADDRESS (or "local")
    and no Ray running in this process. Does not import Ray (--validate-only stays light)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    return (os.environ.get("RAY_ADDRESS") or "local") == "local"


@dataclass(frozen=True)
class CpuDemand:
    """The CPUs a job's long-lived workers hold for the whole run, and what one read task
    needs beside them, with the spec keys that set each (for messages).

    Ray Data reads on tasks that need CPUs of their own: when the model actors (or Ray
    Train's workers) hold every CPU, no read task is ever scheduled, and the job waits
    forever with nothing in its log. Measured on this 2-CPU machine before this check:
    `caption_dataset.py --set resources.workers=2` printed its plan line and nothing
    more for 100 s (the 1-worker job takes ~12 s); `finetune.py` with
    `scaling.num_workers=2` sat for 10 minutes in Ray Data's split coordinator.
    """

    workers: int
    cpus_per_worker: float
    reader_cpus: float
    workers_key: str
    cpus_key: str
    reader_key: str | None = None  # None: the read tasks take Ray Data's default of 1 CPU

    @property
    def total(self) -> float:
        return self.workers * self.cpus_per_worker + self.reader_cpus

    def problem(self, have: float, where: str, *,
                outcome: str = "No read task would ever start and the job would wait forever",
                elsewhere: str = ", or run on a larger cluster (RAY_ADDRESS)") -> str | None:
        """A 'key: what, why, fix' line when `have` CPUs cannot hold the workers and one read task."""
        if self.total <= have + 1e-9:
            return None
        reader = (f"{self.reader_key}={self.reader_cpus:g}" if self.reader_key
                  else f"{self.reader_cpus:g} (Ray Data's default)")
        fixes = []
        fit = int((have - self.reader_cpus + 1e-9) // self.cpus_per_worker)
        if 1 <= fit < self.workers:
            fixes.append(f"{self.workers_key}={fit}")
        spare = (have - self.reader_cpus) / self.workers
        if spare >= 0.1:
            fixes.append(f"{self.cpus_key}={_round_down(spare):g}")
        if not fixes and self.reader_key and have >= 0.2:  # share the CPUs out
            fixes.append(f"{self.cpus_key}={_round_down(have / 2 / self.workers):g} and "
                         f"{self.reader_key}={_round_down(have / 2):g}")
        fix = " or ".join(fixes) if fixes else f"fewer {self.workers_key}"
        return (
            f"{self.workers_key}: {self.workers} worker(s) x {self.cpus_key}={self.cpus_per_worker:g} hold "
            f"{self.workers * self.cpus_per_worker:g} CPU(s) for the whole run, and each read task needs {reader} "
            f"more: {self.total:g} CPUs, but {where} has {have:g}. {outcome}. Set {fix}{elsewhere}"
        )


def _round_down(x: float) -> float:
    """x rounded down to a tenth (Ray schedules fractional CPUs in units of 1/10000)."""
    return int(x * 10 + 1e-9) / 10


def private_ray_cpus() -> float | None:
    """The CPUs of the private Ray init_ray would start here (Ray's own count: cgroup and
    container limits included), or None when the job uses a running Ray (RAY_ADDRESS,
    or one this process already started)."""
    if not starts_private_ray():
        return None
    try:
        from ray._private.utils import get_num_cpus  # what ray.init(address="local") counts

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - a Ray without this internal: the machine's count
        return float(os.cpu_count() or 1)


def private_cpu_problems(demand: CpuDemand) -> list[str]:
    """The problem (one line, or none) of running `demand` on the private Ray this job
    would start; empty on a running Ray, which warn_cluster_cpus checks once joined."""
    have = private_ray_cpus()
    if have is None:
        return []
    problem = demand.problem(have, "this machine (the job starts its own Ray here: RAY_ADDRESS is unset)")
    return [problem] if problem else []


def check_private_cpus(demand: CpuDemand) -> None:
    """Raise PreflightError (exit 2, nothing written) when the private Ray this job would
    start cannot run `demand`; call before writing anything. No-op on a running Ray."""
    problems = private_cpu_problems(demand)
    if problems:
        from .preflight import PreflightError

        raise PreflightError("job", problems)


def warn_cluster_cpus(demand: CpuDemand) -> None:
    """On a running cluster, say when its CPUs now cannot run `demand`: an autoscaler
    may add nodes (so this is no error), but without one the job waits forever."""
    import ray

    have = float(ray.cluster_resources().get("CPU", 0.0))
    problem = demand.problem(
        have, "the cluster now", elsewhere="",
        outcome="No read task can start until the autoscaler adds nodes (without one, the job waits forever)")
    if problem:
        log.warning("%s", problem)
