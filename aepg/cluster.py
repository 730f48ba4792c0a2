"""A multi-node Ray cluster on this machine, for trying cluster features without a cloud.

Each node is one ``ray start --block`` process with its own CPUs, custom resources, node name
(``head``, ``worker-1``, ...) and temp folder in the cluster's log folder, as separate machines have
separate disks: placement across nodes is real, a trial's node reads as a name, and one node's
runtime-env agent never deletes the packages another node extracted (``--working-dir``). Stopping
a node terminates that process, which takes its raylet and workers with it; losing a worker node
(``kill -9`` of its process tree, as a crashed machine would) leaves the head and the other nodes
running, which is what a node-loss rehearsal needs. Only what was started here is stopped, by
process id.

Ray advertises the host's address for its nodes even when asked for 127.0.0.1; the dashboard
is bound to 127.0.0.1. Clients need ``RAY_ADDRESS``, ``RAY_AUTH_MODE=token`` and the cluster's
token (Ray 2.60 turns token authentication on). The token is decided once, as the head starts: a
copy of the user's own (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ~/.ray/auth_token) where
there is one, else a new one, in a file of the cluster's log folder that every node and the
printed client line name.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from aepg.ray_setup import API_SERVER_ENV, RayStartError, free_port

READY = "This command will now block forever"
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}
"""The head's checks of its nodes: a lost node is declared in seconds (Ray's default takes about 30),
which a rehearsal on one machine, where nothing is slow for network reasons, can afford."""
USER_TOKEN = Path("~/.ray/auth_token").expanduser()
HEAD = "head"


def user_token() -> str | None:
    """The token a Ray client of this user would send: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH
    names, or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or USER_TOKEN).expanduser()
    return path.read_text().strip() if path.is_file() else None


@dataclass
class Node:
    name: str
    cpus: float
    resources: dict[str, float]
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class LocalCluster:
    head_cpus: float = 1
    head_resources: dict[str, float] = field(default_factory=dict)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aepg-cluster-")))
    start_timeout: float = 60
    nodes: list[Node] = field(default_factory=list)
    port: int = 0
    dashboard_port: int = 0
    token_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        """What a driver (``aepg train``, ``aepg sweep``, ``ray job submit``) needs to join."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def _decide_token(self) -> None:
        self.token_path = self.log_dir / "auth_token"
        self.token_path.touch(mode=0o600)
        self.token_path.write_text(user_token() or secrets.token_hex(32))

    def _ray(self) -> str:
        return shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"

    def _start(self, name: str, cpus: float, resources: dict[str, float], settings: dict[str, str],
               args: list[str]) -> Node:
        log = self.log_dir / f"{name}.log"
        command = [self._ray(), "start", "--block", "--disable-usage-stats", f"--num-cpus={cpus:g}",
                   f"--node-name={name}", f"--temp-dir={self.log_dir / name}", f"--resources={json.dumps(resources)}",
                   f"--dashboard-agent-listen-port={free_port()}", *args]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                   **{API_SERVER_ENV: f"http://127.0.0.1:{self.dashboard_port}"}, **settings)
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        node = Node(name, cpus, resources, process, log)
        self.nodes.append(node)
        deadline = time.time() + self.start_timeout
        while READY not in log.read_text():
            if process.poll() is not None or time.time() > deadline:
                how = (f"exited with code {process.returncode}" if process.poll() is not None
                       else f"did not start within {self.start_timeout:g} s")
                self.stop()
                raise RayStartError(f"Ray node {name} {how}; its log: {log}")
            time.sleep(0.2)
        return node

    def start(self) -> LocalCluster:
        self._decide_token()
        self.port, self.dashboard_port = free_port(), free_port()
        self._start(HEAD, self.head_cpus, self.head_resources, HEALTH_CHECK,
                    ["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"])
        return self

    def add_worker(self, cpus: float = 1, resources: dict[str, float] | None = None) -> Node:
        taken = {n.name for n in self.nodes}
        name = next(f"worker-{i}" for i in range(1, len(taken) + 2) if f"worker-{i}" not in taken)
        return self._start(name, cpus, resources or {}, {}, [f"--address={self.address}"])

    def stop_node(self, node: Node, timeout: float = 15) -> None:
        """Terminate the node's ``ray start`` process, which stops that node's Ray processes;
        whatever is still running after ``timeout`` seconds is killed."""
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_node(node)
                return
        self.nodes.remove(node)

    def kill_node(self, node: Node) -> None:
        """Lose the node as a crashed machine would: SIGKILL its process tree (raylet, workers)."""
        import psutil

        try:
            root = psutil.Process(node.pid)
            tree = [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        node.process.wait()
        self.nodes.remove(node)

    def lost(self) -> list[Node]:
        """Nodes whose ``ray start`` process has exited since the last call; forgotten here."""
        gone = [n for n in self.nodes if n.process.poll() is not None]
        for node in gone:
            self.nodes.remove(node)
        return gone

    def stop(self) -> None:
        for node in reversed(list(self.nodes)):  # workers first, head last
            self.stop_node(node)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_local_cluster(workers: int, head_cpus: int, worker_cpus: int, start_timeout: float) -> int:
    """``aepg cluster local``: start a head and workers, print how to use them, stop on Ctrl-C.
    A worker node that dies is one line and the rest go on; the head's death ends the cluster."""
    cluster = LocalCluster(head_cpus=head_cpus, head_resources={"head_node": 1}, start_timeout=start_timeout)
    try:  # Ctrl-C, SIGTERM and SIGHUP (a closed terminal) end the wait as KeyboardInterrupt (aepg.interrupts)
        cluster.start()
        for i in range(workers):
            cluster.add_worker(worker_cpus, {f"worker_node_{i + 1}": 1})
        print(f"Ray cluster on this machine: head ({head_cpus:g} CPU) + {workers} worker node(s) ({worker_cpus:g} CPU each)")
        print("  " + " ".join(f"{k}={v}" for k, v in cluster.client_env.items()))
        print(f"  dashboard: http://127.0.0.1:{cluster.dashboard_port}   logs: {cluster.log_dir}")
        print("  node processes: " + ", ".join(f"{n.name}={n.pid}" for n in cluster.nodes))
        print("Ctrl-C stops exactly these nodes.", flush=True)
        while True:
            for node in cluster.lost():
                code = node.process.returncode
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                rest = "" if node.name == HEAD else "; the other nodes go on"
                print(f"aepg: node {node.name} (pid {node.pid}) {how}; its log: {node.log}{rest}", flush=True)
                if node.name == HEAD:
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()
