"""Ray for aepg's jobs: connecting to it (or starting a local instance) and checking that the
cluster can ever schedule a job. Imports neither torch nor the trainer, so a sweep's driver, which
only orchestrates trials, starts without them."""

from __future__ import annotations

import logging
import os

from aepg import interrupts
from aepg.config import ConfigError, RunConfig

log = logging.getLogger("aepg")

# Environment the Ray workers need from the driver.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
                 "MLFLOW_LOGGING_LEVEL", "AEPG_DATA",
                 "HF_HUB_OFFLINE", "HF_HOME")


def ensure_ray(trial_output: bool = True) -> None:
    """Connect to RAY_ADDRESS if set, else start a local Ray on 127.0.0.1 (with its dashboard,
    which cleans up the placement groups of stopped workers). ``trial_output`` False keeps the
    workers' output in Ray's log files (``ray logs``) instead of this terminal."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    quiet = {"log_to_driver": trial_output, **({} if trial_output else {"logging_level": logging.WARNING})}
    runtime_env = {"env_vars": env} if env else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, **quiet)
    else:  # "local": never join a cluster some `ray start` left on this machine
        ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                 include_dashboard=True, runtime_env=runtime_env, **quiet)
    interrupts.restore()


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return resources


def check_fits(needed: dict[str, float], what: str) -> None:
    """Refuse work the Ray cluster can never schedule (it would wait forever).

    On a cluster reached through RAY_ADDRESS an autoscaler may add nodes: only warn there.
    """
    import ray

    have = ray.cluster_resources()
    short = {k: v for k, v in needed.items() if v > have.get(k, 0.0) + 1e-9}
    if not short:
        return
    message = f"{what} needs {needed} but the Ray cluster has {({k: have.get(k, 0.0) for k in needed})}"
    if os.environ.get("RAY_ADDRESS"):
        log.warning("%s; waiting for the autoscaler", message)
    else:
        raise ConfigError([("scaling", message + "; lower scaling.num_workers or scaling.cpus_per_worker")])
