"""A multi-node Ray cluster on this machine, for trying cluster features without a cloud.

Each node is one ``ray start --block`` process with its own CPUs and custom resources (so
placement across nodes is real); stopping a node terminates that process, which takes its
raylet and workers with it. Only what was started here is stopped, by process id.

Ray advertises the host's address for its nodes even when asked for 127.0.0.1; the dashboard
is bound to 127.0.0.1. Clients need ``RAY_ADDRESS``, ``RAY_AUTH_MODE=token`` and the token (Ray 2.60 turns token
authentication on): the user's own (~/.ray/auth_token) where there is one, else one made for the
cluster, named by ``RAY_AUTH_TOKEN_PATH`` in ``client_env``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = "This command will now block forever"
USER_TOKEN = Path("~/.ray/auth_token").expanduser()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    nodes: list[Node] = field(default_factory=list)
    port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token_env(self) -> dict[str, str]:
        """The token every node and client uses: the user's (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``
        or ~/.ray/auth_token) if there is one, else one made for this cluster in its log folder."""
        if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or USER_TOKEN.is_file():
            return {}
        path = self.log_dir / "auth_token"
        if not path.is_file():
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        return {"RAY_AUTH_TOKEN_PATH": str(path)}

    @property
    def client_env(self) -> dict[str, str]:
        """What a driver (``aepg train``, ``aepg sweep``, ``ray job submit``) needs to join."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", **self.token_env}

    def _ray(self) -> str:
        return shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"

    def _start(self, name: str, cpus: float, resources: dict[str, float], args: list[str], timeout: float) -> Node:
        log = self.log_dir / f"{name}.log"
        command = [self._ray(), "start", "--block", "--disable-usage-stats", f"--num-cpus={cpus:g}",
                   f"--resources={json.dumps(resources)}", f"--dashboard-agent-listen-port={free_port()}", *args]
        env = {**os.environ, "RAY_AUTH_MODE": "token", **self.token_env}
        env.pop("RAY_ADDRESS", None)
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        node = Node(name, cpus, resources, process, log)
        self.nodes.append(node)
        deadline = time.time() + timeout
        while READY not in log.read_text():
            if process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"Ray node {name} did not start; see {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        return node

    def start(self, timeout: float = 60) -> LocalCluster:
        self.port, self.dashboard_port = free_port(), free_port()
        self._start("head", self.head_cpus, self.head_resources,
                    ["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"], timeout)
        return self

    def add_worker(self, cpus: float = 1, resources: dict[str, float] | None = None, timeout: float = 60) -> Node:
        name = f"worker{sum(n.name.startswith('worker') for n in self.nodes) + 1}"
        return self._start(name, cpus, resources or {}, [f"--address={self.address}"], timeout)

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

        root = psutil.Process(node.pid)
        for process in [*root.children(recursive=True), root]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        node.process.wait()
        self.nodes.remove(node)

    def stop(self) -> None:
        for node in reversed(list(self.nodes)):  # workers first, head last
            self.stop_node(node)
        # `ray start --head` records its address for later `ray.init()` calls; forget ours.
        record = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray" / "ray_current_cluster"
        if self.port and record.is_file() and record.read_text().strip().endswith(f":{self.port}"):
            record.unlink()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_local_cluster(workers: int, head_cpus: int, worker_cpus: int) -> int:
    """``aepg cluster local``: start a head and workers, print how to use them, stop on Ctrl-C."""
    cluster = LocalCluster(head_cpus=head_cpus, head_resources={"head_node": 1})
    try:  # Ctrl-C, SIGTERM and SIGHUP (a closed terminal) end the wait as KeyboardInterrupt (aepg.interrupts)
        cluster.start()
        for i in range(workers):
            cluster.add_worker(worker_cpus, {f"worker_node_{i + 1}": 1})
        print(f"Ray cluster on this machine: head ({head_cpus:g} CPU) + {workers} worker node(s) ({worker_cpus:g} CPU each)")
        print("  " + " ".join(f"{k}={v}" for k, v in cluster.client_env.items()))
        print(f"  dashboard: http://127.0.0.1:{cluster.dashboard_port}   logs: {cluster.log_dir}")
        print("  node processes: " + ", ".join(f"{n.name}={n.pid}" for n in cluster.nodes))
        print("Ctrl-C stops exactly these nodes.", flush=True)
        while all(n.process.poll() is None for n in cluster.nodes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0
