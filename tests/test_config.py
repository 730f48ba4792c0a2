"""Configs: YAML + overrides, and bad values rejected before any compute with the key named."""

import logging
import os

import pytest
import yaml

from aepg.cli import main
from aepg.config import ConfigError, load_config, to_yaml

from conftest import CONFIGS, run_aepg

DIGITS = str(CONFIGS / "digits.yaml")

BAD = [
    (["epochs=3"], "epochs", "unknown key"),
    (["train.epoch=3"], "train.epoch", "did you mean 'epochs'"),
    (["train.lr_rate=0.1"], "train.lr_rate", "known keys: epochs, first_task_epochs, head_only_epochs, lr,"),
    (["train.epochs=three"], "train.epochs", "valid integer"),
    (["train.batch_size=true"], "train.batch_size", "valid integer"),
    (["annealing.tau=0"], "annealing.tau", "greater than 0"),
    (["annealing.tau=-1.5"], "annealing.tau", "greater than 0"),
    (["model.method.rank=0"], "model.method.rank", "greater than or equal to 1"),
    (["benchmark.num_tasks=11"], "benchmark.num_tasks", "only 10 classes"),
    (["train.lr=0"], "train.lr", "greater than 0"),
    (["train.lr=-1e-3"], "train.lr", "greater than 0"),
    (["annealing.kind=exponential"], "annealing.kind", "'sigmoid'"),
    (["objective.kind=hinge"], "objective.kind", "unknown objective"),
    (["objective.kind=label_smoothing", "objective.eps=1.5"], "objective.eps", "less than 1"),
    (["objective.kind=focal", "objective.gama=2"], "objective.gama", "did you mean 'gamma'"),
    (["train.head_only_epochs=3"], "train.head_only_epochs", "less than train.epochs"),
    (["model.backbone=vit_base_patch16_225", "model.weights=random"], "model.backbone", "did you mean 'vit_base_patch16_224'"),
    (["model.weights=/no/such/file.pth"], "model.weights", "neither"),
    (["model.backbone=vit_tiny_patch16_224"], "model.weights", "lite0-offline weights fit only"),
    (["benchmark.dataset=cifar10"], "benchmark.dataset", "unknown dataset"),
    (["scaling.num_workers=3"], "train.batch_size", "divisible"),
    (["train.epochs"], "train.epochs", "key=value"),
]


@pytest.mark.parametrize("overrides, key, fragment", BAD, ids=[b[1] + ":" + b[0][0] for b in BAD])
def test_bad_config_exits_2_naming_the_key(overrides, key, fragment, capsys, workdir):
    assert main(["train", DIGITS, *overrides, "--dry-run"]) == 2
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if l.strip().startswith(key + ":"))
    assert fragment in line
    assert not (workdir / "mlflow.db").exists()


def test_every_problem_is_reported(workdir):
    with pytest.raises(ConfigError) as info:
        load_config(DIGITS, ["annealing.tau=0", "train.lr=-1", "bogus=1"])
    assert {key for key, _ in info.value.problems} == {"annealing.tau", "train.lr", "bogus"}


def test_bad_files(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    assert main(["train", str(tmp_path / "list.yaml"), "--dry-run"]) == 2
    assert "mapping" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "broken.yaml"), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
    assert "not found" in capsys.readouterr().err


def test_overrides_and_resolved_yaml_round_trip(tmp_path):
    cfg = load_config(DIGITS, ["train.lr=1e-3", "annealing.kind=cosine", "model.method.blocks=[0,1]"])
    assert cfg.train.lr == 1e-3 and cfg.annealing.kind == "cosine" and cfg.model.method.blocks == [0, 1]
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(to_yaml(cfg))
    assert load_config(resolved) == cfg
    assert yaml.safe_load(resolved.read_text())["train"]["lr"] == 1e-3


def test_console_script_exit_code(workdir):
    result = run_aepg(["train", DIGITS, "annealing.tau=0"], cwd=workdir)
    assert result.returncode == 2
    assert "annealing.tau" in result.stderr
    dry = run_aepg(["train", DIGITS, "--dry-run", "train.epochs=7"], cwd=workdir)
    assert dry.returncode == 0 and yaml.safe_load(dry.stdout)["train"]["epochs"] == 7


def test_shipped_configs_validate():
    paths = sorted(CONFIGS.rglob("*.yaml"))
    leaves = [p for p in paths if "peft" not in p.parts and "backbones" not in p.parts]
    assert len(leaves) >= 2 + 1 + 4 + 4 * 7
    for path in leaves:
        load_config(path)
    lae = load_config(CONFIGS / "paper" / "cub200_lae.yaml")
    assert (lae.benchmark.dataset.kind, lae.model.method.kind, lae.train.head_only_epochs) == ("cub200", "lora", 30)
    assert lae.model.method.chosen_parts()["lae"].decay == 0.999, "the protocol's decay, switched on by peft/lae.yaml"
    assert "lae" not in load_config(CONFIGS / "paper" / "cub200_lora.yaml").model.method.chosen_parts()


def test_a_backbone_checkpoint_layer_changes_only_the_backbone(tmp_path):
    paper = CONFIGS / "paper"
    (tmp_path / "l2p_in21k.yaml").write_text(
        f"extends: [{paper / 'imagenet_r_l2p.yaml'}, {paper / 'backbones' / 'augreg_in21k.yaml'}]\n")
    layered, plain = load_config(tmp_path / "l2p_in21k.yaml"), load_config(paper / "imagenet_r_l2p.yaml")
    assert layered.model.backbone == "vit_base_patch16_224.augreg_in21k"
    assert plain.model.backbone == load_config(paper / "backbones" / "augreg_in21k_ft_in1k.yaml").model.backbone
    layered.model.backbone = plain.model.backbone
    assert layered == plain


def test_extends_merges_parents_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 7, lr: 0.01}\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("train: {lr: 0.02}\n")
    (tmp_path / "leaf.yaml").write_text("extends: [a.yaml, b.yaml]\nseed: 3\n")
    cfg = load_config(tmp_path / "leaf.yaml")
    assert (cfg.train.epochs, cfg.train.lr, cfg.seed) == (7, 0.02, 3)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize("args, message", [(["--workers", "-1"], "--workers: must be >= 0"),
                                           (["--worker-cpus", "0"], "--worker-cpus: must be >= 1"),
                                           (["--head-cpus", "1.5"], "--head-cpus: '1.5' is not a whole number")])
def test_local_cluster_refuses_bad_sizes_before_starting_anything(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", "local", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_catalog_sizes_of_digits_are_the_real_split():
    import numpy as np

    from aepg.benchmarks.digits import load_digits_splits
    from aepg.config import BenchmarkConfig

    splits = load_digits_splits()
    bench = BenchmarkConfig()
    train, test = bench.dataset.class_sizes(bench)
    assert np.bincount(splits.train.labels).tolist() == train
    assert np.bincount(splits.test.labels).tolist() == test


@pytest.mark.parametrize("overrides", [[], ["benchmark.num_tasks=3", "benchmark.max_train_per_class=17", "train.batch_size=7"],
                                       ["scaling.num_workers=2", "train.batch_size=10"]])
def test_dry_run_plan_matches_what_the_trainer_does(overrides):
    import torch

    from aepg import preflight
    from aepg.distributed import Context
    from aepg.launch import build_job
    from aepg.trainer import ContinualTrainer

    cfg = load_config(DIGITS, overrides)
    plan = preflight.plan(cfg)
    model, benchmark, objective = build_job(cfg)
    workers = max(1, cfg.scaling.num_workers)
    trainers = [ContinualTrainer(cfg, model, benchmark, objective, Context(rank, workers, torch.device("cpu")))
                for rank in range(workers)]
    assert [t.train for t in plan.tasks] == [len(task.train) for task in benchmark.tasks]
    assert [t.test for t in plan.tasks] == [len(task.test) for task in benchmark.tasks]
    assert [t.classes for t in plan.tasks] == [len(task.classes) for task in benchmark.tasks]
    for trainer in trainers:
        assert [t.steps for t in plan.tasks] == [trainer.steps_per_epoch(task) * cfg.train.epochs for task in benchmark.tasks]
    assert plan.train_samples == sum(len(task.train) for task in benchmark.tasks) * cfg.train.epochs


HEAVY = ("torch", "torchvision", "timm", "ray", "mlflow", "optuna")


LIGHT_CHECK = ("import sys\nfrom aepg.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
               f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")


@pytest.fixture(scope="module")
def warm_cache_env(tmp_path_factory):
    """An environment whose backbone-facts cache one dry run (which may import torch) has filled."""
    import subprocess
    import sys

    env = {**os.environ, "AEPG_CACHE": str(tmp_path_factory.mktemp("cache"))}
    warm = subprocess.run([sys.executable, "-c", LIGHT_CHECK, "train", DIGITS, "--dry-run"], env=env,
                          capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr
    return env


@pytest.mark.parametrize("args", [["train", DIGITS, "--dry-run"], ["train", DIGITS, "nonsense.key=1"],
                                  ["train", DIGITS, "--resume", "no-such-run"],
                                  ["sweep", str(CONFIGS.parent / "sweeps" / "quickstart.yaml"), "--dry-run"],
                                  ["--version"], ["--help"]])
def test_validation_imports_nothing_heavy(args, tmp_path, warm_cache_env):
    """Checking and printing cost no torch, timm, Ray or MLflow import (the backbone facts are cached),
    and neither does a real run that its checks refuse."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LIGHT_CHECK, *args], env=warm_cache_env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]




def test_an_override_of_another_entrys_key_is_said_to_be_ignored(tmp_path):
    """A key of an entry that is not the chosen one is checked, then left out of the run: the dry
    run says so, under the old name too (which means the new one)."""
    out = run_aepg(["train", CONFIGS / "digits.yaml", "train.optimizer.momentum=0.5", "train.nesterov=true",
                    "model.method.rank=6", "--dry-run"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "aepg: warning: train.optimizer.momentum=0.5 is ignored: train.optimizer is adam, which has no key momentum" \
        in out.stderr
    assert "aepg: warning: train.nesterov=true is ignored: train.optimizer is adam, which has no key nesterov" in out.stderr
    assert "rank=6 is ignored" not in out.stderr and "rank: 6" in out.stdout
