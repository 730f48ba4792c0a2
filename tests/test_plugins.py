"""A third-party package (tests/plugin) adds an objective, an a_t schedule, a training method, a
part, a data set, a searcher, an early-stopping scheduler and a sweep protocol through entry points,
without a fork: pip installs it for real, and aepg validates, sweeps and logs its entries."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import CONFIGS, REPO, jpeg, run_aepg
from mlflow import MlflowClient

PLUGIN = REPO / "tests" / "plugin"
DIGITS = str(CONFIGS / "digits.yaml")
PLUGIN_KINDS = ["objective.kind=gce", "model.method.kind=feature_affine"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """The environment of a Python that has the example plugin installed (pip, into its own folder)."""
    site, source = tmp_path_factory.mktemp("plugin-site"), tmp_path_factory.mktemp("plugin") / "source"
    shutil.copytree(PLUGIN, source)  # pip builds in the source folder: keep the checkout clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(source)],
                   check=True, capture_output=True)
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}


def test_plugin_entries_are_unknown_without_the_package(workdir):
    out = run_aepg(["train", DIGITS, "objective.kind=gce", "--dry-run"], workdir)
    assert out.returncode == 2
    assert "objective.kind: unknown objective 'gce'" in out.stderr


def test_a_broken_plugin_is_one_line_naming_its_package(workdir):
    """A package whose entry point names a module that is not there (its metadata written as pip does)."""
    site = workdir / "site"
    info = site / "broken_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[aepg.objectives]\nbroken = broken_plugin_module_that_is_missing\n")
    out = run_aepg(["train", DIGITS, "objective.kind=gce", "--dry-run"], workdir, {"PYTHONPATH": str(site)})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "objective plugin 'broken'" in out.stderr and "broken-plugin" in out.stderr
    # A built-in kind never loads plugins: the same environment validates a built-in config.
    assert run_aepg(["train", DIGITS, "--dry-run"], workdir, {"PYTHONPATH": str(site)}).returncode == 0


def test_plugin_entries_validate_like_built_ins(workdir, plugin_env):
    out = run_aepg(["train", DIGITS, *PLUGIN_KINDS, "objective.q=0.5", "--dry-run"], workdir, plugin_env)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["objective"] == {"kind": "gce", "logits": "local", "q": 0.5}
    assert resolved["model"]["method"]["init_scale"] == 1.0 and "rank" not in resolved["model"]["method"]

    annealed = run_aepg(["train", DIGITS, "annealing.kind=two_phase", "annealing.switch=0.25", "--dry-run"], workdir,
                        plugin_env)
    assert annealed.returncode == 0, annealed.stderr
    assert yaml.safe_load(annealed.stdout)["annealing"] == {"kind": "two_phase", "scope": "task", "span": "task",
                                                           "switch": 0.25}
    bad = run_aepg(["train", DIGITS, *PLUGIN_KINDS, "objective.q=2", "model.method.init_scal=2", "--dry-run"],
                   workdir, plugin_env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "objective.q: Input should be less than or equal to 1" in bad.stderr
    assert "model.method.init_scal: unknown key; did you mean 'init_scale'?" in bad.stderr


def image_folder(root, classes: int) -> None:
    """torchvision's ImageFolder layout: 3 training and 2 test JPEGs per class."""
    for c in range(classes):
        for split, count in (("train", 3), ("test", 2)):
            for i in range(count):
                jpeg(root / "images" / split / f"class{c}" / f"{i}.jpg", 10 * c + i, size=(20, 24))


def test_a_plugin_data_set_counts_its_classes_from_its_folder(workdir, plugin_env):
    """The class count comes from the entry's keys and the root: the plan and the task check use it;
    its keys are checked under it."""
    image_folder(workdir / "data", classes=4)
    chosen = [DIGITS, "benchmark.dataset=image-folder", f"benchmark.root={workdir / 'data'}"]
    out = run_aepg(["train", *chosen, "benchmark.num_tasks=2", "--dry-run"], workdir, plugin_env)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["benchmark"]["dataset"]["folder"] == "images"
    assert "# task 2: 2 classes, 6 training / 4 test images" in out.stdout
    image_folder(workdir / "data", classes=6)
    assert "# task 2: 3 classes, 9 training / 6 test images" in run_aepg(
        ["train", *chosen, "benchmark.num_tasks=2", "--dry-run"], workdir, plugin_env).stdout
    for args, expected in [
        (["benchmark.num_tasks=7"], "benchmark.num_tasks: 7 tasks but image-folder has only 6 classes"),
        (["benchmark.dataset.foldr=x"], "benchmark.dataset.foldr: unknown key; did you mean 'folder'?"),
        (["benchmark.dataset.folder=elsewhere"], "benchmark.dataset: image folder not found: expected"),
        (["benchmark.download=true"], "benchmark.download: image-folder cannot be downloaded by aepg; only fashion-mnist, cifar100 can"),
    ]:
        bad = run_aepg(["train", *chosen, *args, "--dry-run"], workdir, plugin_env)
        assert bad.returncode == 2 and expected in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.slow
def test_a_plugin_objective_and_data_set_train_for_real(workdir, plugin_env):
    """The plugin's objective over its data set, through the decoded cache, in one real run."""
    image_folder(workdir / "data", classes=4)
    out = run_aepg(["train", DIGITS, "benchmark.dataset=image-folder", f"benchmark.root={workdir / 'data'}",
                    "benchmark.num_tasks=2", "objective.kind=gce", "objective.q=0.5", "train.epochs=1"], workdir, plugin_env)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "image-folder-gce-lora-s0"
    assert run.data.params["objective.q"] == "0.5" and "annealing.kind" not in run.data.params
    assert (workdir / "data" / ".aepg-cache").is_dir(), "the image files were decoded into the cache"
    assert "final/avg_incremental_accuracy" in run.data.metrics


@pytest.mark.ray
@pytest.mark.slow
def test_plugin_entries_run_in_a_real_sweep(workdir, plugin_env):
    """The plugin's a_t schedule, method, part, data set, searcher and scheduler in one sweep: two
    trials sampled by its quasi-Monte Carlo searcher, fewer than the median rule's three samples (it
    builds and stops nothing); each run names the package behind each entry in its manifest. (Its
    objective, which a trial of this sweep cannot use beside an annealed one, trains in
    test_a_plugin_objective_and_data_set_train_for_real.)"""
    image_folder(workdir / "data", classes=4)
    sweep = {
        "name": "plugin",
        "base_config": DIGITS,
        "base_overrides": {"objective": {"kind": "aepg"}, "annealing": {"kind": "two_phase"},
                           "model": {"method": {"kind": "feature_affine", "parts": {"l2_anchor": {"weight": 0.5}}}},
                           "train": {"epochs": 1, "batch_size": 16},
                           "benchmark": {"dataset": {"kind": "image-folder"}, "root": str(workdir / "data"),
                                         "num_tasks": 2}},
        "space": {"annealing.switch": {"uniform": [0.25, 0.75]}},
        "search": {"algorithm": "qmc", "seed": 0, "num_trials": 2, "max_concurrent": 2},
        "scheduler": {"kind": "median", "grace_period": 1},
        "trial": {"cpus": 1},
    }
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    out = run_aepg(["sweep", "sweep.yaml"], workdir, plugin_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aepg-digits")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`aepg.kind` = 'sweep'")
    assert parent.data.params["scheduler.kind"] == "median" and parent.data.params["scheduler.min_samples"] == "3"
    assert parent.data.params["search.scheduler"] == "MedianStoppingRule(grace_period=1, min_samples_required=3)"
    assert parent.data.params["search.sampler"] == "QMCSampler(seed=0, scramble=True)"
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`aepg.status` = 'finished'")
    switches = sorted(float(r.data.params["annealing.switch"]) for r in runs)
    assert len(switches) == 2 and 0.25 <= switches[0] < switches[1] <= 0.75
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["annealing.kind"] == "two_phase"
        assert run.data.params["model.method.kind"] == "feature_affine"
        assert run.data.params["model.method.init_scale"] == "1.0"
        assert run.data.params["model.method.parts.l2_anchor.weight"] == "0.5"
        assert run.data.params["benchmark.dataset.kind"] == "image-folder"
        assert run.data.params["benchmark.dataset.folder"] == "images"
        assert run.data.tags["params_method"] == str(2 * 1280)  # a scale and a shift per feature of Lite0
        assert "final/avg_incremental_accuracy" in run.data.metrics
        manifest = json.load(open(client.download_artifacts(run.info.run_id, "manifest.json",
                                                            str(workdir / run.info.run_id))))
        plugin = {"package": "aepg-example-plugin", "version": "0.1.0"}
        assert manifest["entries"]["annealing"] == {"name": "two_phase", **plugin}
        assert manifest["entries"]["method"] == {"name": "feature_affine", **plugin}
        assert manifest["entries"]["part l2_anchor"] == {"name": "l2_anchor", **plugin}
        assert manifest["entries"]["dataset"] == {"name": "image-folder", **plugin}


def test_a_plugin_protocol_trains_each_configuration_its_own_way(workdir, plugin_env):
    """The plugin's ``class_orders`` protocol, named by a sweep file: each configuration trains on
    two class orders at once, one run per order nested under its run, and ranks on their mean."""
    sweep = {
        "name": "orders",
        "base_config": DIGITS,
        "base_overrides": {"train": {"epochs": 1, "batch_size": 16},
                           "benchmark": {"num_tasks": 2, "max_train_per_class": 12, "max_test_per_class": 6}},
        "space": {"train.lr": {"choice": [0.0003]}},
        "protocol": {"kind": "class_orders", "orders": [3, 4]},
        "search": {"algorithm": "grid"},
        "scheduler": {"kind": "none"},
        "metric": "last_accuracy",
        "trial": {"cpus": 1},
    }
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    planned = run_aepg(["sweep", "sweep.yaml", "--dry-run"], workdir, plugin_env)
    assert planned.returncode == 0 and "(class orders protocol)" in planned.stdout, planned.stderr
    out = run_aepg(["sweep", "sweep.yaml"], workdir, plugin_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("aepg.kind") == "sweep"]
    (trial,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    orders = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id]
    assert parent.data.params["sweep.protocol"] == "class_orders"
    assert sorted(r.data.params["benchmark.order_seed"] for r in orders) == ["3", "4"]
    assert {r.info.status for r in [trial, *orders]} == {"FINISHED"}
    mean = sum(r.data.metrics["seed_run/last_accuracy"] for r in orders) / 2
    assert trial.data.metrics["final/last_accuracy"] == pytest.approx(mean, abs=1e-12)
    assert trial.data.tags["aepg.status"] == "finished"


def test_aepg_list_names_every_entry_with_its_keys_and_package(workdir, plugin_env):
    """`aepg list` in an 80-column terminal: every entry of every catalogue, a plugin's entries
    with the package that provides them, no line wider than the terminal."""
    out = run_aepg(["list"], workdir, {**plugin_env, "COLUMNS": "80"})
    assert out.returncode == 0 and not out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    settings = {"objectives": "objective.kind", "schedules": "annealing.kind", "methods": "model.method.kind",
                "parts": "model.method.parts", "datasets": "benchmark.dataset.kind",
                "optimizers": "train.optimizer.kind", "lr_schedules": "train.lr_schedule.kind",
                "searchers": "search.algorithm", "schedulers": "scheduler.kind", "protocols": "protocol.kind"}
    for name, setting in settings.items():  # each catalogue with the key that chooses its entry
        assert f"{name} ({setting})" in lines
    listed = {line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")}
    assert {"aepg", "ce", "lora", "ranpac", "digits", "cifar100", "adam", "sgd", "cosine", "tpe", "asha"} <= listed
    assert {"slca", "slca_pp", "lca", "macil", "tuna", "sce", "align", "merge", "drift", "select"} <= listed, \
        "today's methods, their loss and their parts"
    assert {"gce", "two_phase", "feature_affine", "median", "l2_anchor", "qmc", "image-folder", "class_orders"} <= listed, \
        "the plugin's entries"
    text = " ".join(out.stdout.split())
    assert "[aepg-example-plugin==0.1.0]" in text and "keys: logits=local, q=0.7" in text, text[:2000]
    assert "keys: lr_scale=0.01, head=linear, head_scale=20, parts={align}, batchnorm=train" in text, \
        "a method's own parts are listed"
    one = run_aepg(["list", "schedulers"], workdir, plugin_env)
    assert one.returncode == 0 and one.stdout.startswith("schedulers (scheduler.kind)") and "objectives" not in one.stdout
    bad = run_aepg(["list", "objective"], workdir)
    assert bad.returncode == 2 and "invalid choice: 'objective'" in bad.stderr
