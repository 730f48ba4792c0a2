"""Cluster configs, and a real 2-node Ray cluster on this machine with a real MLflow server."""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from aepg.cluster import LocalCluster, free_port
from aepg.sweep.spec import load_sweep

from conftest import CONFIGS, REPO, run_aepg, start_aepg, wait_until
from conftest import mlflow_server as mlflow_server_on
from test_sweep import TINY_BASE, write_sweep

RAY_CONFIGS = REPO / "ray_configs"
DIGITS = str(CONFIGS / "digits.yaml")


# -- configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_pass_rays_own_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RAY_CONFIGS / name).read_text())
    validate_config(prepare_config(config))  # Ray's cluster-config schema and node-type rules
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"] and "scheduling" not in head["node_config"]
    assert head["resources"]["trial_driver"] > 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert len(workers) >= 2 and all(v["min_workers"] == 0 for v in workers.values())
    assert sum(v["max_workers"] for v in workers.values()) <= config["max_workers"]
    setup = " ".join(config["setup_commands"])
    assert "pip install -e" in setup and "aepg" in setup and "AEPG_STORAGE" in setup
    assert any("mlflow server" in c and "--backend-store-uri" in c for c in config["head_start_ray_commands"])


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((RAY_CONFIGS / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def check_pod_template(template: dict, gpus: bool) -> None:
    (container,) = template["spec"]["containers"]
    assert container["name"] and container["image"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["key"] == "tracking_uri"
    limits, requests_ = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["cpu"] and limits["memory"] and requests_["cpu"]
    assert ("nvidia.com/gpu" in limits) == gpus
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts == {v["name"] for v in template["spec"]["volumes"]}


def test_kuberay_manifests_have_what_the_operator_requires():
    docs = manifests()
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] in ("token", "disabled") and spec["authOptions"]["mode"] == "token"
    assert isinstance(spec["headGroupSpec"]["rayStartParams"], dict)
    check_pod_template(spec["headGroupSpec"]["template"], gpus=False)
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups) >= 2
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert isinstance(group["rayStartParams"], dict)
        check_pod_template(group["template"], gpus=True)
    claim = docs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]

    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert job["spec"]["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["aepg", "sweep"]
    sweep_file = command[2].replace("/home/ray/aepg", str(REPO))
    assert load_sweep(sweep_file, command[3:]).spec.storage_path.startswith("/mnt/shared")


# -- a real 2-node cluster and MLflow server on this machine ----------------------------------

@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(head_cpus=1, head_resources={"head_node": 1}) as local:
        local.add_worker(1, {"node_b": 1})
        yield local


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server_on(folder / "mlflow.db", folder / "server.log", "--artifacts-destination", str(folder / "artifacts")) as uri:
        yield uri


@pytest.fixture(scope="module")
def node_ids(cluster):
    """Node ids by role, asked of the cluster by a separate client (Ray reads its auth mode at import)."""
    query = ("import json, ray; ray.init(); print(json.dumps({('b' if 'node_b' in n['Resources'] else 'head'): "
             "n['NodeID'] for n in ray.nodes() if n['Alive']}))")
    out = subprocess.run([sys.executable, "-c", query], env={**os.environ, **cluster.client_env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def env_for(cluster, server) -> dict:
    return {**cluster.client_env, "MLFLOW_TRACKING_URI": server}


def test_two_worker_run_spans_both_nodes(cluster, mlflow_server, node_ids, workdir):
    result = run_aepg(["train", DIGITS, "benchmark.num_tasks=2", "benchmark.max_train_per_class=40", "train.epochs=1",
                       "scaling.num_workers=2", "scaling.cpus_per_worker=1", "scaling.torch_threads=1", "run_name=span"],
                      cwd=workdir, env=env_for(cluster, mlflow_server))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id],
                                filter_string="attributes.run_name = 'span'")
    assert run.info.status == "FINISHED" and "final/last_accuracy" in run.data.metrics
    assert set(run.data.tags["aepg.ray_node_ids"].split(",")) == set(node_ids.values())
    assert {"accuracy_matrix.png", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_losing_a_worker_node_mid_sweep(cluster, mlflow_server, node_ids, workdir):
    """Two trials spread over the two nodes; node b dies under one of them, which resumes on the head."""
    path = write_sweep(
        workdir, space={"train.lr": {"choice": [0.0003, 0.001]}},
        base_overrides={**TINY_BASE, "benchmark": {"num_tasks": 3, "max_train_per_class": 60, "max_test_per_class": 10},
                        "train": {"epochs": 2, "batch_size": 16}, "checkpoint": {"every_epochs": 1}},
        search={"algorithm": "grid", "max_concurrent": 2}, scheduler={"kind": "none"},
        trial={"cpus": 1, "max_failures": 2})
    driver = start_aepg(["sweep", path], workdir, env_for(cluster, mlflow_server))
    client = MlflowClient(mlflow_server)
    worker = next(n for n in cluster.nodes if n.name.startswith("worker"))
    try:
        def checkpointed_trials_on_b() -> list:
            experiment = client.get_experiment_by_name("aepg-digits")
            on_b = [r for r in client.search_runs([experiment.experiment_id],
                                                  filter_string=f"tags.`aepg.ray_node_id` = '{node_ids['b']}'")
                    if r.info.status == "RUNNING"] if experiment else []
            return [r for r in on_b if list(workdir.glob(f"aepg_sweeps/*/runs/{r.info.run_id}/checkpoints/ckpt-*"))]

        on_b = wait_until(checkpointed_trials_on_b, "a trial on node b to checkpoint", driver)
        experiment = client.get_experiment_by_name("aepg-digits").experiment_id
        wait_until(lambda: {r.data.tags.get("aepg.ray_node_id") for r in client.search_runs(
            [experiment], filter_string="tags.`aepg.trial_id` != ''")} == set(node_ids.values()),
            "the other trial to start on the head", driver)
        cluster.kill_node(worker)
        output, _ = driver.communicate(timeout=600)
    finally:
        driver.kill()
        if worker not in cluster.nodes:
            cluster.add_worker(1, {"node_b": 1})
    assert driver.returncode == 0, output[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "runs left RUNNING"
    moved = client.get_run(on_b[0].info.run_id)
    assert moved.info.status == "FINISHED" and moved.data.tags["aepg.tasks_done"] == "3"
    assert "aepg.resumed_from" in moved.data.tags, "the retried trial did not resume from its checkpoint"
    assert moved.data.tags["aepg.ray_node_id"] == node_ids["head"]


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


@pytest.mark.ray
def test_closing_the_terminal_of_a_local_cluster_stops_exactly_its_nodes(workdir):
    """SIGHUP (a closed terminal) stops `aepg cluster local` as Ctrl-C does: every process of its nodes ends."""
    import re
    import signal

    import psutil

    from conftest import AEPG

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
