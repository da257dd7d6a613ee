"""Starting or joining Ray, the same way for every job."""

from __future__ import annotations

import os

# Settings the workers need from the driver's environment: object-storage access
# (on a laptop they name the S3 endpoint and credentials; on a cluster the instance
# role supplies them instead), offline hub mode, the checkpoint cache, and the
# test-only fault hook.
_FORWARDED_PREFIXES = ("AWS_",)
_FORWARDED_NAMES = ("HF_HUB_OFFLINE", "COMBINER_CACHE_DIR", "COMBINER_FAULT")


def worker_env() -> dict[str, str]:
    """The driver's environment variables that Ray workers must see too."""
    return {
        k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES) or k in _FORWARDED_NAMES
    }


def init_ray(*, verbose: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS (`ray job submit` sets it) or start a private local Ray.

    Without RAY_ADDRESS a job never joins whichever local cluster another process
    happens to run (`ray.init()`'s default), so a laptop run is self-contained, and
    its workers get the driver's storage settings (worker_env). A job that joins a
    cluster leaves the environment to it: under `ray job submit` the job's own
    runtime_env already reaches every worker, and Ray refuses a second one that
    sets the same variables.

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
    env = worker_env()
    # A private instance lives for one job: no dashboard (its processes cost seconds of
    # start-up on every run; start a cluster with `ray start --head` and set RAY_ADDRESS
    # to watch one).
    ray.init(
        address="local", runtime_env={"env_vars": env} if env else None, include_dashboard=False,
        logging_level=level,
    )
