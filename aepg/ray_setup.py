"""Ray for aepg's jobs: connecting to it (or starting a local instance) and checking that the
cluster can ever schedule a job. Imports neither torch nor the trainer, so a sweep's driver, which
only orchestrates trials, starts without them."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from aepg import interrupts
from aepg.config import ConfigError, RunConfig

log = logging.getLogger("aepg")

FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
                 "MLFLOW_LOGGING_LEVEL", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "AEPG_DATA", "AEPG_STORAGE", "AEPG_CACHE",
                 "HF_HUB_OFFLINE", "HF_HOME")
"""Environment every Ray worker gets from the driver (a job's runtime env wins where it sets a key)."""

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
"""Where Ray's state API (Ray Train's placement-group cleaner asks it) finds this instance's dashboard;
unset, it searches the machine and fails once a second Ray instance runs there."""

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in a submitted job's entrypoint: the job's runtime env, among others."""


class RayStartError(RuntimeError):
    """A Ray instance or node that did not start; the message names its log."""


def job_env_vars() -> dict[str, str]:
    """The env vars of the runtime env this process was submitted with (``ray job submit
    --runtime-env-json``, a RayJob's ``runtimeEnvYAML``); empty outside a job."""
    text = os.environ.get(JOB_CONFIG_ENV)
    if not text:
        return {}
    return dict((json.loads(text).get("runtime_env") or {}).get("env_vars") or {})


def forwarded_env() -> dict[str, str]:
    """What the driver adds to the workers' environment: FORWARDED_ENV as set here, less the keys a
    job's runtime env already sets (Ray refuses to merge two values for one key; the job's reach the
    workers anyway)."""
    from_job = job_env_vars()
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ and k not in from_job}


def ensure_ray(trial_output: bool = True) -> None:
    """Connect to RAY_ADDRESS if set, else start a local Ray on 127.0.0.1 (with its dashboard,
    which cleans up the placement groups of stopped workers). ``trial_output`` False keeps the
    workers' output in Ray's log files (``ray logs``) instead of this terminal.

    A local instance starts with SIGTERM and SIGHUP blocked, a mask its processes keep: a stop
    signal sent to the whole process group (``timeout``, Slurm, ``kubectl delete``) then reaches
    the driver alone, which stops its trials and closes their runs while Ray still answers."""
    import ray

    if ray.is_initialized():
        return
    env = forwarded_env()
    quiet = {"log_to_driver": trial_output, **({} if trial_output else {"logging_level": logging.WARNING})}
    if os.environ.get("RAY_ADDRESS"):
        check_answers(os.environ["RAY_ADDRESS"])
    try:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env} if env else None, **quiet)
        else:  # "local": never join a cluster some `ray start` left on this machine
            dashboard_port = free_port()
            env[API_SERVER_ENV] = f"http://127.0.0.1:{dashboard_port}"
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.STOP_SIGNALS)
            try:
                ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                         dashboard_port=dashboard_port, include_dashboard=True, runtime_env={"env_vars": env}, **quiet)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    except (ConnectionError, TimeoutError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if os.environ.get("RAY_ADDRESS"):
            raise RayStartError(f"cannot join the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']}: {first} "
                                "(check the address, RAY_AUTH_MODE=token and the cluster's token)") from error
        raise RayStartError(f"a local Ray instance did not start: {first}; its logs: {ray_log_folder()}") from error
    interrupts.restore()


class RayThreadsToLog(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` for a driver whose library output goes to a log: what Ray's
    background threads (``ray_listen_error_messages``, which prints a dead node's notice on stdout,
    ``ray_print_logs``) write goes to the log, everything else to the terminal."""

    def __init__(self, terminal, log):
        self.terminal, self.log = terminal, log

    def _target(self):
        return self.log if threading.current_thread().name.startswith("ray_") else self.terminal

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:
        return self.terminal.encoding


def route_library_output(log_file: Path) -> None:
    """Send what this process writes to its stderr file descriptor (Ray's C++ core, Ray's and Ray Tune's
    loggers, set up on ``sys.__stderr__``) and what Ray's threads print to ``log_file``; aepg's own
    lines stay on the terminal."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    for handler in logging.getLogger().handlers:  # aepg's lines (the root logger's handler, see cli)
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__):
            handler.setStream(terminal)
    sys.stderr = RayThreadsToLog(terminal, sys.__stderr__)
    sys.stdout = RayThreadsToLog(sys.stdout, sys.__stderr__)


HEAD_LOST_S = 30.0
"""How long a joined cluster's head may refuse connections before the driver gives it up: before Ray's
own 60 s, after which Ray ends the process without a word."""


def watch_head(on_lost, every_s: float = 5.0) -> None:
    """On a cluster joined through RAY_ADDRESS, call ``on_lost(address, seconds)`` (in a thread of
    its own) once the head's GCS has refused connections for ``HEAD_LOST_S``. A local instance the
    driver started needs no watch: it ends with the driver."""
    import threading
    import time

    import ray

    if not os.environ.get("RAY_ADDRESS"):
        return
    address = ray.get_runtime_context().gcs_address
    host, _, port = address.rpartition(":")

    def watch() -> None:
        since = None
        while True:
            time.sleep(every_s)
            try:
                socket.create_connection((host, int(port)), timeout=every_s).close()
                since = None
            except OSError:
                since = since or time.monotonic()
                if time.monotonic() - since >= HEAD_LOST_S:
                    on_lost(address, time.monotonic() - since)
                    return

    threading.Thread(target=watch, name="aepg-head-watch", daemon=True).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_answers(address: str, timeout: float = 5) -> None:
    """Refuse a ``host:port`` RAY_ADDRESS where nothing listens at once: Ray itself retries for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", ray:// and the like: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayStartError(f"nothing answers at RAY_ADDRESS={address} ({error.strerror or error}); start the "
                            "cluster, or unset RAY_ADDRESS for a local Ray") from None
    _check_token(address)


def _check_token(address: str) -> None:
    """Refuse at once a token the cluster refuses (Ray's own connect retries for most of a minute, then
    blames the address). Asked through Ray's GCS client, which is not public API: where it is
    missing or fails otherwise, the connect itself says what is wrong, later."""
    from ray.exceptions import AuthenticationError

    try:
        from ray._raylet import GcsClient

        GcsClient(address=address)
    except AuthenticationError as error:
        cause = str(error).removeprefix("RPC error: ").split(".")[0]
        raise RayStartError(f"the Ray cluster at RAY_ADDRESS={address} refused the token ({cause}): give it the "
                            "cluster's token with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH") from None
    except Exception:  # noqa: BLE001 - only the refusal is said here
        return


def ray_log_folder() -> str:
    """Where Ray writes the logs of the newest session on this machine."""
    temp = os.environ.get("RAY_TMPDIR") or "/tmp"
    return str(Path(temp) / "ray" / "session_latest" / "logs")


def in_ray_package(path: str | Path) -> bool:
    """Whether ``path`` lies in a folder Ray manages as a runtime-env package: Ray deletes and
    re-extracts those (another node's agent may do it mid-job), so nothing durable may go there."""
    parts = Path(path).parts
    return "runtime_resources" in parts or any(part.startswith("_ray_pkg_") for part in parts)


def package_cache_problems(paths: dict[str, str]) -> list[tuple[str, str]]:
    """One problem per key whose local path (or sqlite store) lies in Ray's package cache: a job
    submitted with ``--working-dir`` runs there, so relative paths and the defaults land in it."""
    fixes = {"tracking_uri": "set MLFLOW_TRACKING_URI to an MLflow server (http://...) or a sqlite file on shared storage"}
    return [(key, f"{path} is inside Ray's runtime-env package cache, which Ray deletes and re-extracts; "
                  + fixes.get(key, f"set {key} (or AEPG_STORAGE) to shared storage: a path mounted on every node, "
                                   "or s3:// / gs://"))
            for key, path in paths.items() if path and in_ray_package(path.removeprefix("sqlite:///"))]


def node_names() -> dict[str, tuple[str, bool]]:
    """Every node of the cluster by id: its name (``ray start --node-name``; Ray's default is its IP)
    and whether it is alive."""
    import ray

    return {n["NodeID"]: (n.get("NodeName") or n["NodeManagerAddress"], bool(n["Alive"])) for n in ray.nodes()}


def this_node() -> tuple[str, str]:
    """The id and name of the node this process runs on."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return node_id, node_names().get(node_id, (node_id[:8], True))[0]


def _sees(path: str) -> bool:
    return os.path.isfile(path)


def check_shared_storage(storage: str, key: str = "storage_path", timeout_s: float = 60.0) -> None:
    """Refuse a local ``storage`` that some node of a joined cluster does not see, before any trial
    runs: a probe file written here, looked for by a task on every alive node. (A local Ray instance
    is one machine; s3:// and gs:// are shared by nature.)"""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not os.environ.get("RAY_ADDRESS") or "://" in storage:
        return
    alive = {node_id: name for node_id, (name, up) in node_names().items() if up}
    if len(alive) < 2:
        return
    folder = Path(storage).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".aepg-probe-{uuid.uuid4().hex[:8]}"
    probe.write_text("aepg")
    try:
        look = ray.remote(num_cpus=0, max_retries=0)(_sees)
        asks = {name: look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
                .remote(str(probe)) for node_id, name in alive.items()}
        ready, _ = ray.wait(list(asks.values()), num_returns=len(asks), timeout=timeout_s)
        blind = sorted(name for name, ask in asks.items() if ask not in ready or not ray.get(ask))
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ConfigError([(key, f"{folder} is not shared: node(s) {', '.join(blind)} do not see the file the driver "
                            "wrote there; give a folder mounted at the same path on every node, or s3:// or gs://")])


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return resources


def refuse_unschedulable(needed: dict[str, float], what: str, key: str, fix: str) -> None:
    """Refuse work the Ray cluster can never schedule (it would wait forever), naming the ``key`` that
    asks for it and the ``fix``.

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
        raise ConfigError([(key, f"{message}; {fix}")])


def local_cpu_problem(cpus: float, what: str, key: str, fix: str) -> list[tuple[str, str]]:
    """Before Ray starts: work that a local Ray instance (this machine's CPUs, without RAY_ADDRESS)
    could never schedule."""
    have = os.cpu_count() or 1
    if os.environ.get("RAY_ADDRESS") or cpus <= have + 1e-9:
        return []
    return [(key, f"{what} needs {cpus:g} CPUs but this machine has {have} (a local Ray gets them all); {fix}, "
                  "or set RAY_ADDRESS to a cluster")]
