import fcntl
import gzip
import json
import os
import pty
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
AEPG = Path(sys.executable).with_name("aepg")
TINY_VIT = [
    "model.backbone=vit_tiny_patch16_224", "model.weights=random", "model.image_size=32",
    "model.backbone_kwargs={depth: 4, embed_dim: 64, num_heads: 4, patch_size: 8, global_pool: avg}",
    "benchmark.num_tasks=2", "benchmark.max_train_per_class=40", "benchmark.max_test_per_class=10",
    "train.epochs=4", "train.batch_size=16", "train.lr=0.003", "objective.kind=ce",
]
"""Overrides of configs/digits.yaml: a tiny timm ViT (random weights, 32 px, 4 blocks) on two small tasks."""


def run_aepg(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed ``aepg`` console script as a user would."""
    return subprocess.run([str(AEPG), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def run_aepg_read_only(folder: Path, args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run aepg with ``folder`` read-only to it. Permission bits do not stop root, so as root the
    folder is bind-mounted read-only in a private mount namespace (only aepg sees it so); skipped
    where the kernel refuses that namespace."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            return run_aepg(args, cwd, env)
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, "sh", str(folder), "sh", "-c",
                            f'! touch "{folder}/.probe" 2>/dev/null'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("root cannot be kept from writing here: no private mount namespace (unshare -m)")
    return subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, "sh", str(folder), str(AEPG), *args],
                          cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900)


def run_in_terminal(args: list[str], cwd: Path, env: dict | None = None, columns: int = 160, rows: int = 50,
                    timeout: int = 900) -> tuple[int, str]:
    """Run aepg under a pseudo-terminal of ``columns`` x ``rows`` (a fresh one is 0 wide, and progress
    bars draw nothing in 0 columns): its exit status and everything it wrote, as a terminal got it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen([str(AEPG), *args], cwd=cwd, env={**os.environ, **(env or {})}, stdin=follower,
                               stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def start_aepg(args: list[str], cwd: Path, env: dict | None = None, own_group: bool = False) -> subprocess.Popen:
    """Start the ``aepg`` console script in the background (output merged, as text); ``own_group``
    puts it in a process group of its own, for a signal to the whole group (``os.killpg``).

    Its SIGINT is reset to the default: a test run launched with ``&`` from a script inherits
    SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    return subprocess.Popen([str(AEPG), *args], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=own_group,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 300):
    """Poll ``condition`` until it returns something truthy and return that; fail naming ``what``
    on timeout or as soon as ``process`` (the thing being waited on) exits."""
    deadline = time.time() + timeout
    while not (value := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        if process is not None and process.poll() is not None:
            output = process.communicate()[0] if process.stdout else ""
            raise AssertionError(f"process exited ({process.returncode}) while waiting for {what}:\n{output[-3000:]}")
        time.sleep(0.3)
    return value


def through_a_fault(process: subprocess.Popen, ready, what: str, fault, folder: Path, timeout: float = 600) -> str:
    """Wait until ``ready()`` (``what`` names it), then do ``fault()`` (a signal, a killed node or
    server) and return all that ``process`` wrote until it ended; kept in ``folder``/terminal.txt."""
    try:
        wait_until(ready, what, process, timeout=timeout)
        fault()
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    (folder / "terminal.txt").write_text(output)
    return output


@contextmanager
def mlflow_server(store: Path | str, log: Path, *extra: str, env: dict | None = None, port: int | None = None):
    """A real `mlflow server` on 127.0.0.1 (on ``port``, else a free one) over ``store``: a sqlite
    file, or a database URI; yields its URL, then stops it and the workers it forked by its process
    group id."""
    import requests

    from aepg.cluster import free_port

    port = port or free_port()
    backend = store if isinstance(store, str) else f"sqlite:///{store}"
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(log, "a") as out:
        server = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                   "--backend-store-uri", backend, *extra], env={**os.environ, **(env or {})},
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_until(healthy, f"the MLflow server (log: {log})", server, timeout=120)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


def model_inputs(benchmark, images, indices):
    """Some of a task's images as the model sees them at test time (inputs, labels), on the CPU."""
    from aepg.benchmarks.images import collate

    batch, sizes, labels = collate([images[i] for i in indices])
    return benchmark.test_view(batch, sizes), labels


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- helpers several test modules share ---------------------------------------------------------

DIGITS = str(CONFIGS / "digits.yaml")


def jpeg(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    """A real JPEG file of random pixels (height, width)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format: 0x0000 magic, type 0x08 (ubyte), ndim, big-endian sizes, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion(folder: Path, gz: bool, per_class=(6, 2)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in zip(("train", "t10k"), per_class):
        labels = np.repeat(np.arange(10), n)
        images = rng.integers(0, 256, (len(labels), 28, 28))
        arrays[prefix] = images
        for name, data in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            write_idx(folder / (name + (".gz" if gz else "")), data)
    return arrays


TINY_BASE = {"train": {"epochs": 1, "batch_size": 16},
             "benchmark": {"num_tasks": 3, "max_train_per_class": 20, "max_test_per_class": 10}}


def write_sweep(folder, **changes) -> str:
    spec = {
        "name": "tiny",
        "base_config": str(CONFIGS / "digits.yaml"),
        "base_overrides": TINY_BASE,
        "space": {
            "objective.kind": {"choice": ["ce", "aepg"]},
            "annealing.tau": {"uniform": [2.0, 10.0], "when": {"objective.kind": "aepg"}},
            "train.lr": {"loguniform": [1.0e-4, 1.0e-3]},
        },
        "search": {"algorithm": "tpe", "seed": 3, "num_trials": 6, "max_concurrent": 2},
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "trial": {"cpus": 1, "max_failures": 1},
    }
    spec.update(changes)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def interrupt_after_task(workdir, task: int, overrides: list[str], num_tasks: int, env: dict | None = None,
                         stop: signal.Signals = signal.SIGINT) -> str:
    """Start `aepg train`, send ``stop`` once task `task` has checkpointed, check that it exits with
    128 + the signal and prints the command that resumes it; return the run id."""
    process = start_aepg(["train", DIGITS, *overrides], workdir, env)
    try:
        pattern = f"aepg_runs/*/checkpoints/ckpt-{task:04d}-0000.pt"
        checkpoint = wait_until(lambda: sorted(workdir.glob(pattern)), pattern, process)[0]
        process.send_signal(stop)
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    run_id = checkpoint.parent.parent.name
    assert process.returncode == 128 + stop, output[-3000:]
    assert f"continue it with: aepg train {DIGITS} {shlex.join(overrides)} --resume {run_id}" in output, output[-3000:]
    assert f"ckpt-{num_tasks:04d}-0000.pt" not in {p.name for p in checkpoint.parent.iterdir()}, "not interrupted"
    return run_id


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance of 2 CPUs for a module's tests (its GCS address, for RAY_ADDRESS)."""
    import ray

    context = ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    yield context.address_info["gcs_address"]
    ray.shutdown()


def sweep_runs(db):
    """The client of the MLflow store ``db``, and its sweep runs and their child runs."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("aepg-digits")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("aepg.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def finals(folder: Path) -> dict:
    """The final metrics of the one run in ``folder``'s MLflow store (experiment aepg-digits), which
    must have finished."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert run.info.status == "FINISHED"
    return {k: v for k, v in run.data.metrics.items() if k.startswith("final/")}


def assert_resumed_ends_as_uninterrupted(workdir: Path, overrides: list[str], num_tasks: int, after: int = 1) -> None:
    """A digits run stopped after its task ``after`` (counted from 1) and resumed ends on the final
    metrics of the same run never stopped."""
    for folder in ("whole", "cut"):
        (workdir / folder).mkdir()
    whole = run_aepg(["train", DIGITS, *overrides], workdir / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_id = interrupt_after_task(workdir / "cut", after, overrides, num_tasks=num_tasks)
    resumed = run_aepg(["train", DIGITS, *overrides, "--resume", run_id], workdir / "cut")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert finals(workdir / "whole") == finals(workdir / "cut")


def assert_refused_before_running(overrides: list[str], expected: str, workdir: Path) -> None:
    """``aepg train --dry-run`` with ``overrides`` exits 2 with ``expected`` in one line, no traceback,
    and nothing created."""
    result = run_aepg(["train", DIGITS, *overrides, "--dry-run"], workdir)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (workdir / "mlflow.db").exists()


def reference_result(script: str, reference: Path, needs: str, tmp_path: Path) -> dict:
    """What ``tests/reference_runs/<script>`` saves from the reference code cloned at ``reference``
    (the test skips with one line where ``reference/needs`` is not there)."""
    import torch

    if not (reference / needs).exists():
        pytest.skip(f"{reference.name}'s reference code is not at {reference} (clone it there to run it)")
    out = tmp_path / "reference.pt"
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "reference_runs" / script), str(reference), str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=False)["reference"]


def assert_same_result(fresh, stored, where: str = "reference", atol: float = 1e-6) -> None:
    """A reference run's result (nested dicts and lists of tensors) equals the stored one, to ``atol``."""
    import torch

    if isinstance(fresh, dict):
        assert fresh.keys() == stored.keys(), where
        for key in fresh:
            assert_same_result(fresh[key], stored[key], f"{where}.{key}", atol)
    elif isinstance(fresh, list):
        for i, (x, y) in enumerate(zip(fresh, stored, strict=True)):
            assert_same_result(x, y, f"{where}[{i}]", atol)
    elif isinstance(fresh, torch.Tensor):
        torch.testing.assert_close(fresh, stored, rtol=0, atol=atol, msg=where)
    else:
        assert fresh == stored, where


def final_matrix(workdir, run_id):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    path = client.download_artifacts(run_id, "accuracy_matrix.json", str(workdir / run_id))
    return client.get_run(run_id), json.load(open(path))["R"]


# -- precision: a method's statistics after two tasks, on any device (test_precision, test_gpu) --

def trainer_for(precision: str, *overrides: str, device=None):
    """A trainer of the tiny ViT on digits at ``precision`` (on the CPU unless ``device``)."""
    import torch

    from aepg.config import load_config
    from aepg.distributed import Context
    from aepg.launch import build_job
    from aepg.trainer import ContinualTrainer

    cfg = load_config(CONFIGS / "digits.yaml", [*TINY_VIT, f"train.precision={precision}", *overrides])
    model, benchmark, objective = build_job(cfg)
    return ContinualTrainer(cfg, model, benchmark, objective, Context(device=device or torch.device("cpu")))


def randomise(module, seed: int = 1) -> None:
    """Trained-looking values for every trainable parameter of ``module``, the same in every run."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


METHOD_KEYS = {"inflora": ["model.method.kind=inflora", "model.method.rank=4"],
               "ranpac": ["model.method.kind=ranpac", "model.method.bottleneck=4", "model.method.projection_dim=32"]}
STATISTICS = {"inflora": ["A", "basis", "basis_width", "retain"], "ranpac": ["G", "Q", "ridge", "head"]}


def two_tasks_of_statistics(precision: str, kind: str, device=None):
    """The method's statistics after two tasks (trainable parts set to the same trained-looking
    values in every run, so only precision can differ) and its test predictions (on the CPU)."""
    import torch

    from aepg.trainer import TaskInputs

    device = device or torch.device("cpu")
    trainer = trainer_for(precision, *METHOD_KEYS[kind], device=device)
    model, peft = trainer.model, trainer.model.method_module
    for task in trainer.benchmark.tasks:
        peft.begin_task(task.index)
        peft.prepare_task(task.index, TaskInputs(trainer, task))
        randomise(peft, seed=task.index + 1)
        peft.end_task(task.index, TaskInputs(trainer, task))
    test = trainer.benchmark.tasks[-1].test
    x, _ = model_inputs(trainer.benchmark, test, range(len(test)))
    model.eval()
    with torch.no_grad(), trainer.autocast:
        logits = model(x.to(device), slice(0, trainer.benchmark.tasks[-1].stop))
    return {name: getattr(peft, name).cpu().clone() for name in STATISTICS[kind]}, logits.float().cpu()
