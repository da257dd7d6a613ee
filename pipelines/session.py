"""Starting or joining Ray, the same way for every job."""

from __future__ import annotations

import os

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
    import logging

    import ray

    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    address = os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        ray.init(address=address, logging_level=level)
        return
    if not verbose:
        # "Token authentication is enabled for this Ray cluster": true of every private
        # instance (Ray 2.60's default), and nothing a job's user acts on.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # A private instance lives for one job: no dashboard (its processes cost seconds of
    # start-up on every run; start a cluster with `ray start --head` and set RAY_ADDRESS
    # to watch one).
    ray.init(address="local", include_dashboard=False, logging_level=level)
