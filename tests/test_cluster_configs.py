"""The cluster configs a user launches: the Ray cluster launcher's, checked by Ray's own validation,
and the KubeRay manifests, checked against the CRDs of a pinned KubeRay release (tests/data/kuberay)."""

import copy
import gzip
import re
import shlex
from functools import cache
from importlib.metadata import version

import jsonschema
import pytest
import yaml

from aepg.sweep.checks import load_sweep

from conftest import REPO

RAY_CONFIGS = REPO / "ray_configs"
CRDS = REPO / "tests" / "data" / "kuberay"

def pins() -> dict[str, str]:
    """constraints.txt: the versions the project is tested with, Python's among them."""
    text = (REPO / "constraints.txt").read_text()
    found = dict(line.split("==") for line in text.split() if "==" in line)
    found["python"] = re.search(r"^# python (\d+\.\d+)", text, re.M).group(1)
    return found


def ray_image() -> str:
    return f"rayproject/ray:{pins()['ray']}-py{pins()['python'].replace('.', '')}-gpu"


def launcher_config(name: str) -> dict:
    return yaml.safe_load((RAY_CONFIGS / name).read_text())


def all_commands(config: dict) -> str:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return "\n".join(c for key in keys for c in config.get(key, []))


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_pass_rays_own_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher_config(name)
    validate_config(prepare_config(config))  # Ray's cluster-config schema and node-type rules
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"] and "scheduling" not in head["node_config"]
    assert head["resources"]["trial_driver"] > 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert len(workers) >= 2 and all(v["min_workers"] == 0 for v in workers.values())
    assert sum(v["max_workers"] for v in workers.values()) <= config["max_workers"]


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_deliver_what_the_docs_say(name):
    """Token auth on every node, MLflow's URI and the token on head and workers, the pinned Ray and
    Python in the image, storage access for every node, the data on every node."""
    config = launcher_config(name)
    commands = all_commands(config)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "MLFLOW_TRACKING_URI=http://" in ray_starts[0] and "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in ray_starts[1]
    assert any("mlflow server" in c and "--backend-store-uri" in c for c in config["head_start_ray_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"], "the token must reach every node"

    assert config["docker"]["image"] == ray_image() and config["docker"]["container_name"]
    assert "-c ~/aepg/constraints.txt" in commands or "-c /home/ubuntu/aepg/constraints.txt" in commands

    workers = [v for k, v in config["available_node_types"].items() if k != config["head_node_type"]]
    nodes = [config["available_node_types"][config["head_node_type"]], *workers]
    if name == "aws.yaml":
        assert all(n["node_config"]["IamInstanceProfile"]["Arn"] for n in nodes), "every node needs the bucket's role"
        assert all(n["node_config"]["ImageId"] for n in nodes)
    else:
        assert all(n["node_config"]["serviceAccounts"][0]["email"] for n in nodes), "every node needs the bucket's role"
    assert re.search(r"(aws s3 sync|gsutil -m rsync -r) \S+ \$AEPG_DATA", commands), "the data must reach every node"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_every_variable_a_launcher_config_exports_is_read_by_aepg_or_ray(name):
    exported = set(re.findall(r"export ([A-Z_][A-Z0-9_]*)=", all_commands(launcher_config(name))))
    assert {"AEPG_STORAGE", "AEPG_DATA"} <= exported
    sources = "\n".join(path.read_text() for path in (REPO / "aepg").rglob("*.py"))
    unread = {v for v in exported if f'"{v}"' not in sources and not v.startswith(("RAY_", "MLFLOW_"))}
    assert not unread, f"{name} exports {sorted(unread)}, which no aepg code reads"


# -- KubeRay -----------------------------------------------------------------------------------

def closed(schema):
    """A CRD's schema as `kubectl apply --validate=strict` reads it: an object with declared
    properties rejects any other field (unless it preserves unknown fields)."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


@cache
def crd_schema(kind: str) -> dict:
    path = CRDS / f"ray.io_{kind.lower()}s.yaml.gz"
    crd = yaml.load(gzip.open(path), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return closed(version["schema"]["openAPIV3Schema"])


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((RAY_CONFIGS / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def crd_problems(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifests_are_valid_against_the_pinned_crds(kind):
    doc = manifests()[kind]
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_problems(doc) == []


@pytest.mark.parametrize("kind, path, typo", [
    ("RayCluster", ["spec", "headGroupSpec"], "rayStartParam"),
    ("RayCluster", ["spec", "authOptions"], "mdoe"),
    ("RayJob", ["spec"], "runtimeEnvYaml"),
])
def test_a_typo_in_a_manifest_fails_the_crd_check(kind, path, typo):
    doc = copy.deepcopy(manifests()[kind])
    section = doc
    for key in path:
        section = section[key]
    section[typo] = "x"
    problems = crd_problems(doc)
    assert problems and typo in " ".join(problems)


def test_kuberay_manifests_wire_token_auth_mlflow_and_shared_storage():
    docs = manifests()
    cluster, job = docs["RayCluster"], docs["RayJob"]
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    templates = [cluster["spec"]["headGroupSpec"]["template"], *(g["template"] for g in cluster["spec"]["workerGroupSpecs"])]
    for template in templates:
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["key"] == "tracking_uri"
        assert env["AEPG_STORAGE"]["value"].startswith("/mnt/shared")
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/mnt/shared"}
    assert "ReadWriteMany" in docs["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["aepg", "sweep"]
    sweep_file = command[2].replace("/home/ray/aepg", str(REPO))
    assert load_sweep(sweep_file, command[3:]).spec.storage_path.startswith("/mnt/shared")


def test_the_image_installs_the_versions_the_project_pins():
    dockerfile = (RAY_CONFIGS / "kuberay" / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(ray_image())}$", dockerfile, re.M)
    assert "-c /home/ray/aepg/constraints.txt" in dockerfile
    installed = {name: version(name) for name in pins() if name != "python"}
    assert {"ray", "torch", "timm", "peft", "mlflow", "optuna"} <= set(installed)
    assert installed == {k: v for k, v in pins().items() if k != "python"}, "constraints.txt differs from what is tested"


# -- what a job's driver forwards, and where it may write -------------------------------------

def test_a_jobs_runtime_env_wins_over_what_the_driver_forwards(monkeypatch):
    import json as json_

    from aepg.ray_setup import forwarded_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://head:5000")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("AEPG_DATA", "/data")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "AEPG_DATA"} <= set(forwarded_env())
    job = {"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": "http://head:5000", "MLFLOW_DISABLE_TELEMETRY": "1"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json_.dumps(job))
    forwarded = forwarded_env()
    assert "MLFLOW_TRACKING_URI" not in forwarded and "MLFLOW_DISABLE_TELEMETRY" not in forwarded
    assert forwarded["AEPG_DATA"] == "/data"


@pytest.mark.parametrize("path, inside", [
    ("/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_ab12/aepg_sweeps", True),
    ("/home/ray/_ray_pkg_ab12/mlflow.db", True),
    ("/mnt/shared/aepg/sweeps", False),
    ("/home/me/runtime_resources_notes/aepg_runs", False),
])
def test_outputs_in_rays_package_cache_are_refused(path, inside):
    from aepg.ray_setup import package_cache_problems

    problems = package_cache_problems({"storage_path": path, "tracking_uri": f"sqlite:///{path}"})
    assert [key for key, _ in problems] == (["storage_path", "tracking_uri"] if inside else [])
