"""A sweep on a Ray cluster launched the way users launch it: `aepg cluster local` (a head and a
worker node, token authentication), a real `mlflow server` on 127.0.0.1, the shipped RayJob's
entrypoint and runtime env submitted through Ray's Jobs API, and a worker node lost mid-sweep.
The tests share one cluster and run in file order: the node-loss test comes last."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from aepg.cluster import free_port

from conftest import AEPG, DIGITS, REPO, TINY_BASE, run_aepg, start_aepg, through_a_fault, wait_until, write_sweep
from conftest import mlflow_server as mlflow_server_on

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAYJOB = REPO / "ray_configs" / "kuberay" / "rayjob.yaml"
SMALL_QUICKSTART = ["search.num_trials=2", "search.max_concurrent=2", "seeds=[0,1]", "scheduler.kind=none",
                    "base_overrides.benchmark.num_tasks=2", "base_overrides.train.epochs=1",
                    "base_overrides.benchmark.max_train_per_class=20", "base_overrides.benchmark.max_test_per_class=10"]
"""The quickstart (aEPG against CE, paired) at its smallest: 2 configurations x 2 arms x 2 seeds."""


@dataclass
class RunningCluster:
    """`aepg cluster local` as a user runs it, and what it printed."""

    process: subprocess.Popen
    log: Path
    client_env: dict[str, str]
    pids: dict[str, int]
    dashboard: str
    logs: Path
    """The cluster's folder: each node's log and temp folder (its session, its runtime-env packages)."""

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def local_cluster(folder: Path, workers: int = 1, log_name: str = "cluster.log"):
    """`aepg cluster local --workers N` started in ``folder`` as a user starts it; stopped as Ctrl-C would."""
    log = folder / log_name
    env = {**os.environ, "PATH": f"{AEPG.parent}{os.pathsep}{os.environ['PATH']}"}  # jobs find `aepg`
    with open(log, "w") as out:
        process = subprocess.Popen([str(AEPG), "cluster", "local", "--workers", str(workers)], cwd=folder, stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "Ctrl-C stops exactly these nodes" in log.read_text(), "the cluster to start", process, 180)
        text = log.read_text()
        client_env = dict(item.split("=", 1) for item in re.search(r"^  (RAY_ADDRESS=.*)$", text, re.M).group(1).split())
        nodes = re.search(r"node processes: (.*)", text).group(1)
        pids = {name: int(pid) for name, pid in re.findall(r"([\w-]+)=(\d+)", nodes)}
        yield RunningCluster(process, log, client_env, pids, re.search(r"dashboard: (\S+)", text).group(1),
                             Path(re.search(r"logs: (\S+)", text).group(1)))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server_on(folder / "mlflow.db", folder / "server.log", "--artifacts-destination", str(folder / "artifacts")) as uri:
        yield uri


SUBMIT = """
import json, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
address, entrypoint, runtime_env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = JobSubmissionClient(address)
job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
deadline = time.time() + 600
while not client.get_job_status(job).is_terminal() and time.time() < deadline:
    time.sleep(1)
print(json.dumps({"status": client.get_job_status(job).value, "logs": client.get_job_logs(job)}))
"""


def submit(cluster: RunningCluster, entrypoint: str, runtime_env: dict) -> tuple[str, str]:
    """Submit a job with Ray's JobSubmissionClient, as `ray job submit` and KubeRay's submitter do;
    its final status and its logs."""
    done = subprocess.run([sys.executable, "-c", SUBMIT, cluster.dashboard, entrypoint, json.dumps(runtime_env)],
                          env={**os.environ, **cluster.client_env}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["status"], result["logs"]


def project_folder(root: Path) -> Path:
    """What a user's working directory holds: the sweep files and configs, nothing else."""
    project = root / "project"
    for name in ("sweeps", "configs"):
        shutil.copytree(REPO / name, project / name)
    (project / "marker-aepg-test").write_text(str(root))
    return project


def package_copies(cluster: RunningCluster, root: Path) -> list[Path]:
    """The copies the nodes extracted of this test's working directory (in their package caches)."""
    markers = cluster.logs.glob("*/session_*/runtime_resources/working_dir_files/*/marker-aepg-test")
    return [marker.parent for marker in markers if marker.read_text() == str(root)]


def test_the_shipped_rayjob_runs_a_sweep_on_both_nodes(cluster, mlflow_server, tmp_path):
    """The RayJob's entrypoint and runtimeEnvYAML (which sets MLFLOW_DISABLE_TELEMETRY, as aepg's
    driver does) with MLFLOW_TRACKING_URI and a working_dir: the job succeeds, its trials run on
    both nodes, every run is FINISHED on the server, and the outputs are on the shared storage.
    The sweep is the quickstart, aEPG against CE paired: each configuration's run holds one run per
    arm and seed under it, the same settings but the arm's key, and the paired difference it
    reports is the mean of the per-seed differences of those runs (its interval the t-interval)."""
    job = next(d for d in yaml.safe_load_all(RAYJOB.read_text()) if d["kind"] == "RayJob")["spec"]
    shared = tmp_path / "shared"
    entrypoint = job["entrypoint"].replace("/home/ray/aepg/", "").replace("/mnt/shared", str(shared))
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] = mlflow_server
    runtime_env["working_dir"] = str(project_folder(tmp_path))

    # Without shared storage, the job's outputs would land in Ray's package cache: refused in one line.
    # Submitted as docs/cluster.md shows it, with the `ray job submit` command line.
    ray = str(AEPG.with_name("ray"))
    refused = subprocess.run([ray, "job", "submit", "--address", cluster.dashboard, "--working-dir",
                              runtime_env["working_dir"], "--runtime-env-json", json.dumps({"env_vars": runtime_env["env_vars"]}),
                              "--", "aepg", "sweep", "sweeps/quickstart.yaml"],
                             env={**os.environ, **cluster.client_env}, capture_output=True, text=True, timeout=300)
    logs = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in logs, logs[-3000:]
    assert "storage_path:" in logs and "inside Ray's runtime-env package cache" in logs, logs[-3000:]

    status, logs = submit(cluster, " ".join([entrypoint, *SMALL_QUICKSTART]), runtime_env)
    assert status == "SUCCEEDED", logs[-5000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("aepg-digits")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`aepg.sweep` LIKE 'quickstart-%'")
    parents = [r for r in runs if r.data.tags.get("aepg.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    arms = [r for r in runs if "aepg.arm" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2 and len(arms) == 8
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["aepg.nodes"] for r in arms} == {"head", "worker-1"}, "runs trained on both nodes"
    assert {node for c in children for node in c.data.tags["aepg.run_nodes"].split(",")} == {"head", "worker-1"}
    check_paired(children, arms)
    assert re.search(r"#\s+trial\s+status\s+final ± std\s+ce\s+aepg\s+aepg-ce", logs), logs[-3000:]
    assert re.search(r"aepg - ce at t0[12]\S*: [+-]0\.\d{4}, 95% interval \[", " ".join(logs.split())), logs[-3000:]
    board = logs[logs.index("leaderboard, ranked on"):]
    # a column where it fits, else on the line under each trial
    assert re.search(r"^#\s+trial\s+.*\bnodes\b|^\s+.*\bnodes \S", board, re.M), logs[-3000:]
    assert re.search(r"\bhead\b", board) and re.search(r"\bworker-1\b", board), logs[-3000:]
    (folder,) = (shared / "aepg" / "sweeps").glob("quickstart-*")
    assert (folder / "best.yaml").is_file() and (folder / "driver.log").is_file()
    copies = package_copies(cluster, tmp_path)
    assert copies, "the job ran from Ray's copy of its working directory"
    written = [p for copy in copies for p in copy.rglob("*") if p.name in ("aepg_sweeps", "aepg_runs", "mlflow.db")]
    assert not written, f"written into Ray's package cache: {written}"


@pytest.mark.production
def test_ray_job_stop_closes_every_run_of_a_paired_sweep_and_says_how_to_resume(cluster, mlflow_server, tmp_path):
    """`ray job stop` sends SIGTERM and, 3 s later, SIGKILL: within that window the sweep closes its
    own run, its configuration runs and their arm runs KILLED, and its log ends on the resume line."""
    shared = tmp_path / "shared"
    ray, env = str(AEPG.with_name("ray")), {**os.environ, **cluster.client_env}
    submitted = subprocess.run(
        [ray, "job", "submit", "--no-wait", "--address", cluster.dashboard, "--working-dir",
         str(project_folder(tmp_path)), "--runtime-env-json",
         json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DISABLE_TELEMETRY": "true"}}),
         "--", "aepg", "sweep", "sweeps/quickstart.yaml", *SMALL_QUICKSTART, "base_overrides.train.epochs=3",
         f"storage_path={shared}/sweeps"], env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = re.search(r"(raysubmit_\w+)", submitted.stdout + submitted.stderr).group(1)
    client = MlflowClient(mlflow_server)

    def sweep_runs_of_job() -> list:
        sweeps = list((shared / "sweeps").glob("quickstart-*"))
        experiment = client.get_experiment_by_name("aepg-digits")
        if not sweeps or experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], filter_string=f"tags.`aepg.sweep` = '{sweeps[0].name}'")

    wait_until(lambda: any(int(r.data.tags.get("aepg.tasks_done", 0)) >= 1 for r in sweep_runs_of_job()
                           if "aepg.arm" in r.data.tags), "an arm run's first task", timeout=600)
    stopped = subprocess.run([ray, "job", "stop", "--address", cluster.dashboard, job], env=env, capture_output=True,
                             text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    logs = subprocess.run([ray, "job", "logs", "--address", cluster.dashboard, job], env=env, capture_output=True,
                          text=True, timeout=120).stdout
    (tmp_path / "job.log").write_text(logs)
    assert re.search(r"sweep stopped by SIGTERM; continue it with: aepg sweep --resume \S+quickstart-", logs), logs[-3000:]
    runs = sweep_runs_of_job()
    arms = [r for r in runs if "aepg.arm" in r.data.tags]
    assert arms and not [r.info.run_name for r in runs if r.info.status == "RUNNING"], \
        {r.info.run_name: r.info.status for r in runs}
    assert "KILLED" in {r.info.status for r in arms}


def check_paired(trials: list, arms: list) -> None:
    """Each configuration of a paired sweep (compare: {objective.kind: [ce, aepg]} over seeds 0 and 1)
    against its arm runs, as MLflow holds them."""
    from aepg.sweep.noise import t_quantile

    metric = "avg_incremental_accuracy"
    for trial in trials:
        own = [run for run in arms if run.data.tags["mlflow.parentRunId"] == trial.info.run_id]
        assert sorted((r.data.tags["aepg.arm"], r.data.tags["aepg.seed"]) for r in own) == \
            [("aepg", "0"), ("aepg", "1"), ("ce", "0"), ("ce", "1")]
        for key in ("train.lr", "model.method.rank"):
            assert {r.data.params[key] for r in own} == {trial.data.params[key]}
        assert {r.data.params["objective.kind"] for r in own} == {"ce", "aepg"}
        assert {r.data.tags["aepg.config_id"] for r in own} == {trial.data.tags["aepg.config_id"]}
        assert not any(key.startswith("final/") for r in own for key in r.data.metrics), "one seed's value is seed_run/"
        value = {(r.data.tags["aepg.arm"], r.data.tags["aepg.seed"]): r.data.metrics[f"seed_run/{metric}"] for r in own}
        diffs = [value["aepg", seed] - value["ce", seed] for seed in ("0", "1")]
        paired = trial.data.metrics
        assert paired["paired/diff"] == pytest.approx(sum(diffs) / 2, abs=1e-12)
        half = t_quantile(1) * abs(diffs[0] - diffs[1]) / 2  # stdev of two values / sqrt(2)
        assert paired["paired/high"] - paired["paired/diff"] == pytest.approx(half, abs=1e-9)
        assert paired["paired/ce"] == pytest.approx((value["ce", "0"] + value["ce", "1"]) / 2, abs=1e-12)
        assert paired[f"paired_by_seeds/diff_{metric}"] == paired["paired/diff"], "the running value, at 2 seeds"
        assert "seed" not in trial.data.params and trial.data.tags["aepg.arms"] == "objective.kind: ce, aepg"
        assert "objective.kind" not in trial.data.params, "a configuration's run logs only what its arms share"
        assert paired[f"final/{metric}"] == pytest.approx(sum(value.values()) / 4, abs=1e-12), "ranked on the mean"
        shades = {r.data.tags["aepg.arm"]: r.data.tags["mlflow.runColor"] for r in own}
        assert shades["ce"] != shades["aepg"], "arms coloured by their objective"


def test_a_two_worker_train_job_spans_both_nodes(cluster, mlflow_server, tmp_path):
    """`aepg train` with two Ray Train workers, submitted as a job with a working_dir and env vars."""
    runtime_env = {"working_dir": str(project_folder(tmp_path)),
                   "env_vars": {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DISABLE_TELEMETRY": "true"}}
    command = ["aepg", "train", "configs/digits.yaml", "benchmark.num_tasks=2", "benchmark.max_train_per_class=40",
               "train.epochs=1", "scaling.num_workers=2", "scaling.cpus_per_worker=1", "scaling.torch_threads=1",
               "run_name=span", f"storage_path={tmp_path / 'shared' / 'runs'}"]
    status, logs = submit(cluster, " ".join(command), runtime_env)
    assert status == "SUCCEEDED", logs[-5000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id],
                                filter_string="attributes.run_name = 'span'")
    assert run.info.status == "FINISHED" and "final/last_accuracy" in run.data.metrics
    assert len(set(run.data.tags["aepg.worker_node_ids"].split(","))) == 2
    assert {"accuracy_matrix.png", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((tmp_path / "shared" / "runs" / run.info.run_id / "checkpoints").glob("ckpt-*"))


def test_a_token_the_cluster_refuses_is_said_as_refused_at_once(cluster, workdir):
    """A sweep given the wrong token for a token-authenticated cluster: one line saying the token was
    refused, within seconds (Ray's own connect retried for most of a minute and blamed the address),
    and nothing started."""
    (workdir / "wrong_token").write_text("not-the-cluster-token\n")
    env = {**cluster.client_env, "RAY_AUTH_TOKEN_PATH": str(workdir / "wrong_token")}
    started = time.time()
    refused = run_aepg(["sweep", write_sweep(workdir)], cwd=workdir, env=env)
    took = time.time() - started
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in said, said[-3000:]
    assert re.search(rf"^aepg: the Ray cluster at RAY_ADDRESS={re.escape(cluster.client_env['RAY_ADDRESS'])} refused the "
                     r"token \(InvalidAuthToken: .*\): give it the cluster's token with RAY_AUTH_MODE=token and "
                     r"RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH$", said, re.M), said[-3000:]
    assert took < 20, took
    assert not list(workdir.glob("aepg_sweeps/*")), "no sweep folder for a sweep that never started"


PRIVATE_FOLDER = 'mount -t tmpfs aepg-private "$1" && shift && exec "$@"'
"""Run a command with a folder of its own: a tmpfs over it in a private mount namespace, which no Ray
node (started outside that namespace) sees."""


def test_storage_that_the_nodes_do_not_see_is_refused_before_any_trial(cluster, workdir):
    """A sweep whose storage_path only its driver sees (a folder of its own, as a disk local to the
    submitting machine would be): refused in one line naming the nodes that do not see it, before any
    trial or MLflow run starts."""
    private = workdir / "local-disk"
    private.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", PRIVATE_FOLDER, "sh", str(private), "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no private mount namespace here (unshare -m needs root)")
    done = subprocess.run(["unshare", "-m", "sh", "-c", PRIVATE_FOLDER, "sh", str(private), str(AEPG), "sweep",
                           write_sweep(workdir), f"storage_path={private}"], cwd=workdir,
                          env={**os.environ, **cluster.client_env}, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert re.search(rf"^  storage_path: {re.escape(str(private))} is not shared: node\(s\) head, worker-1 do not see "
                     r"the file the driver wrote there; give a folder mounted at the same path on every node, or "
                     r"s3:// or gs://$", said, re.M), said[-3000:]
    assert not (workdir / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_experiments()])


def test_a_local_run_beside_another_ray_instance_stays_quiet(cluster, workdir):
    """A second Ray instance on the machine (the cluster): a local two-worker run's Ray Train actors
    find their own instance's state API, so no "Found multiple active Ray instances" traceback."""
    result = run_aepg(["train", DIGITS, "benchmark.num_tasks=2", "benchmark.max_train_per_class=40", "train.epochs=1",
                       "scaling.num_workers=2", "scaling.cpus_per_worker=1", "scaling.torch_threads=1"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Found multiple active Ray instances" not in output and "Traceback" not in output, output[-3000:]


def kill_tree(pid: int) -> None:
    """Lose a node as a crashed machine would: SIGKILL its `ray start` process and everything under it."""
    import psutil

    root = psutil.Process(pid)
    for process in [*root.children(recursive=True), root]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def test_losing_a_worker_node_mid_sweep(cluster, mlflow_server, workdir):
    """Two trials spread over the two nodes; worker-1 dies under one of them: the cluster goes on,
    the trial resumes on the head in the same MLflow run, and the sweep says so in one line."""
    path = write_sweep(
        workdir, space={"train.lr": {"choice": [0.0003, 0.001]}},
        base_overrides={**TINY_BASE, "benchmark": {"num_tasks": 3, "max_train_per_class": 60, "max_test_per_class": 10},
                        "train": {"epochs": 2, "batch_size": 16}, "checkpoint": {"every_epochs": 1}},
        search={"algorithm": "grid", "max_concurrent": 2}, scheduler={"kind": "none"},
        trial={"cpus": 1, "max_failures": 2})
    driver = start_aepg(["sweep", path], workdir, {**cluster.client_env, "MLFLOW_TRACKING_URI": mlflow_server})
    client = MlflowClient(mlflow_server)

    def runs_on(node: str) -> list:
        experiment = client.get_experiment_by_name("aepg-digits")
        return [r for r in client.search_runs([experiment.experiment_id], filter_string=f"tags.`aepg.nodes` = '{node}'")
                if r.info.status == "RUNNING" and r.data.tags.get("aepg.sweep", "").startswith("tiny-")] if experiment else []

    try:
        on_worker = wait_until(lambda: [r for r in runs_on("worker-1")
                                        if list(workdir.glob(f"aepg_sweeps/*/runs/{r.info.run_id}/checkpoints/ckpt-*"))],
                               "a trial on worker-1 to checkpoint", driver)
        wait_until(lambda: runs_on("head"), "the other trial to start on the head", driver)
        kill_tree(cluster.pids["worker-1"])
        output, _ = driver.communicate(timeout=600)
    finally:
        driver.kill()
    assert driver.returncode == 0, output[-3000:]
    assert cluster.process.poll() is None, "the head went down with the worker"
    assert re.search(r"aepg: node worker-1 \(pid \d+\) was killed by SIGKILL; its log: \S+worker-1.log; "
                     "the other nodes go on", cluster.output())
    short = on_worker[0].info.run_name.split("-", 1)[0]
    assert re.search(rf"{short} lost node worker-1; retrying from task \d on head \(attempt 2 of 3\)", output), output[-3000:]
    assert "Traceback" not in output and "ActorUnavailableError" not in output, "Ray's noise belongs in driver.log"
    runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id],
                              filter_string="tags.`aepg.sweep` LIKE 'tiny-%'")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "runs left RUNNING"
    moved = client.get_run(on_worker[0].info.run_id)
    assert moved.info.status == "FINISHED" and moved.data.tags["aepg.tasks_done"] == "3"
    assert "aepg.resumed_from" in moved.data.tags, "the retried trial did not resume from its checkpoint"
    assert moved.data.tags["aepg.nodes"] == "worker-1,head"


def test_unreachable_tracking_server_fails_before_any_trial(workdir):
    dead = f"http://127.0.0.1:{free_port()}"
    sweep = run_aepg(["sweep", str(REPO / "sweeps" / "quickstart.yaml")], cwd=workdir, env={"MLFLOW_TRACKING_URI": dead})
    assert sweep.returncode == 1 and "unreachable" in sweep.stderr and dead in sweep.stderr
    train = run_aepg(["train", DIGITS], cwd=workdir, env={"MLFLOW_TRACKING_URI": dead})
    assert train.returncode == 1 and "unreachable" in train.stderr
    start = time.monotonic()
    report = run_aepg(["report", "quickstart", "--tracking-uri", dead], cwd=workdir)
    assert report.returncode == 1 and "unreachable" in report.stderr and dead in report.stderr
    assert time.monotonic() - start < 15, "MLflow's own retries would take minutes"
    assert not list(workdir.iterdir()), "nothing should be written"


def test_closing_the_terminal_of_a_local_cluster_stops_exactly_its_nodes(workdir):
    """SIGHUP (a closed terminal) stops `aepg cluster local` as Ctrl-C does: every process of its nodes ends."""
    import psutil

    log = workdir / "cluster.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(AEPG), "cluster", "local", "--workers", "1"], cwd=workdir, stdout=out,
                                   stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        wait_until(lambda: "Ctrl-C stops exactly these nodes" in log.read_text(), "the nodes to start", process, 180)
        line = re.search(r"node processes: (.*)", log.read_text()).group(1)
        nodes = [psutil.Process(int(pid)) for pid in re.findall(r"=(\d+)", line)]
        tree = [*nodes, *(child for node in nodes for child in node.children(recursive=True))]
        assert len(nodes) == 2 and len(tree) > 2
        process.send_signal(signal.SIGHUP)
        assert process.wait(120) == 0, log.read_text()[-3000:]
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"left running: {[p.pid for p in alive]}"
    finally:
        process.kill()


def test_a_cluster_that_cannot_start_or_run_anything_is_one_line(workdir):
    nothing = run_aepg(["cluster", "local", "--workers", "0", "--head-cpus", "0"], cwd=workdir)
    assert nothing.returncode == 2 and "could run nothing" in nothing.stderr
    late = run_aepg(["cluster", "local", "--start-timeout", "1"], cwd=workdir, timeout=120)
    assert late.returncode == 1 and "Traceback" not in late.stderr
    assert re.fullmatch(r"aepg: Ray node head did not start within 1 s; its log: \S+head.log\n", late.stderr)
    address = f"127.0.0.1:{free_port()}"
    absent = run_aepg(["sweep", str(REPO / "sweeps" / "quickstart.yaml")], cwd=workdir, env={"RAY_ADDRESS": address})
    assert absent.returncode == 1 and f"nothing answers at RAY_ADDRESS={address}" in absent.stderr
    assert "Traceback" not in absent.stderr and not list(workdir.glob("aepg_sweeps/*")), "refused: no sweep folder left"


@pytest.mark.production
def test_a_lost_head_ends_the_sweep_in_one_line_with_its_runs_closed_and_a_resume_that_works(workdir):
    """A sweep on a cluster of its own (`aepg cluster local`, head and one worker) through RAY_ADDRESS;
    the head's whole process tree is killed mid-trial: within about a minute the driver says in one
    line that the head is lost and how to resume, its runs are closed FAILED (none RUNNING), and the
    resume on a new cluster finishes the sweep."""
    db = workdir / "mlflow.db"
    path = write_sweep(workdir, space={"train.lr": {"choice": [0.0003, 0.001]}}, scheduler={"kind": "none"},
                       base_overrides={**TINY_BASE, "train": {"epochs": 3, "batch_size": 16}},
                       search={"algorithm": "grid", "max_concurrent": 2}, storage_path=str(workdir / "shared"))
    client = MlflowClient(f"sqlite:///{db}")

    def a_task_done() -> bool:
        if not list(workdir.glob("shared/*/aepg_sweep.json")):
            return False
        runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
        return any(int(r.data.tags.get("aepg.tasks_done", 0)) >= 1 for r in runs)

    killed = {}

    def kill_the_head() -> None:
        killed["at"] = time.time()
        kill_tree(first.pids["head"])

    with local_cluster(workdir, log_name="first.log") as first:
        output = through_a_fault(start_aepg(["sweep", path], workdir, first.client_env), a_task_done,
                                 "a trial's first task", kill_the_head, workdir)
        took = time.time() - killed["at"]
    assert took < 75, (took, output[-3000:])
    said = [line for line in output.splitlines() if "lost the Ray head" in line]
    assert len(said) == 1 and re.fullmatch(r"aepg: sweep lost the Ray head at \S+ \(no answer for \d+ s\); its trials "
                                           r"ended with it\. On a running cluster, continue it with: aepg sweep --resume "
                                           r"shared/tiny-\S+", said[0]), output[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"] and \
        "FAILED" in {r.info.status for r in runs}

    with local_cluster(workdir, log_name="second.log") as second:
        resumed = run_aepg(["sweep", "--resume", said[0].rsplit(" ", 1)[1]], cwd=workdir, env=second.client_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3


@pytest.mark.production
def test_a_node_lost_under_aepg_train_is_one_line_and_the_run_finishes(workdir):
    """`aepg train` with two Ray Train workers on a cluster of three one-CPU nodes; the worker node
    under one of them is killed once a checkpoint is in: the terminal says in one aepg line which
    node was lost and where training resumed, shows no traceback, and the run finishes."""
    client, lost = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), {}

    def worker_nodes() -> list[str]:
        if not list((workdir / "runs").glob("*/checkpoints/ckpt-*.pt")):
            return []
        (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
        return run.data.tags.get("aepg.worker_node_ids", "").split(",")

    def kill_a_worker_node() -> None:
        listed = subprocess.run([str(AEPG.with_name("ray")), "list", "nodes", "--address", cluster.dashboard, "--format",
                                 "json"], env={**os.environ, **cluster.client_env}, capture_output=True, text=True,
                                timeout=120)
        names = {n["node_id"]: n["node_name"] for n in json.loads(listed.stdout)}
        lost["node"] = next(names[n] for n in worker_nodes() if names.get(n, "head") != "head")
        kill_tree(cluster.pids[lost["node"]])

    with local_cluster(workdir, workers=2) as cluster:
        process = start_aepg(["train", DIGITS, "benchmark.num_tasks=3", "train.epochs=2", "checkpoint.every_epochs=1",
                              "benchmark.max_train_per_class=40", "scaling.num_workers=2", "scaling.cpus_per_worker=1",
                              "scaling.torch_threads=1", "failure.max_failures=1", f"storage_path={workdir / 'runs'}"],
                             workdir, cluster.client_env)
        output = through_a_fault(process, worker_nodes, "a checkpoint and the workers' nodes", kill_a_worker_node, workdir)
    assert process.returncode == 0 and "Traceback" not in output, output[-3000:]
    said = [line for line in output.splitlines() if "Ray Train restarted" in line]
    assert len(said) == 1 and re.search(rf"lost node {lost['node']}; Ray Train restarted the workers on [\w, -]+, resuming "
                                        r"at task \d, epoch \d from the last checkpoint \(attempt 2 of 2\)$", said[0]), \
        output[-3000:]
