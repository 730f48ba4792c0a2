"""What only a GPU can show (`bash bench/gpu_check.sh` runs these with the GPU figures): each
precision, the throughput knobs, pinned memory and the decoded cache on the device, a Ray Train run
with one GPU worker, and two trials sharing one GPU. Skipped where there is no CUDA device."""

import pytest
import torch
import yaml
from mlflow import MlflowClient

from aepg.config import load_config
from aepg.distributed import Context
from aepg.launch import build_job
from aepg.trainer import ContinualTrainer

from conftest import CONFIGS, REPO, TINY_VIT, run_aepg, two_tasks_of_statistics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUDA = ["train.device=cuda", "train.epochs=1"]


def fit(*overrides: str, base: list[str] = TINY_VIT) -> ContinualTrainer:
    cfg = load_config(CONFIGS / "digits.yaml", [*base, *CUDA, *overrides])
    model, benchmark, objective = build_job(cfg)
    trainer = ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cuda")))
    trainer.fit()
    return trainer


@pytest.mark.parametrize("precision, resolved", [("auto", "bf16-mixed"), ("bf16-mixed", "bf16-mixed"),
                                                 ("16-mixed", "16-mixed"), ("32-true", "32-true")])
def test_each_precision_trains_on_the_gpu(precision, resolved):
    trainer = fit(f"train.precision={precision}")
    assert trainer.precision == resolved and (trainer.scaler is not None) == (resolved == "16-mixed")
    assert next(trainer.model.parameters()).is_cuda and len(trainer.state.accuracy_matrix) == 2


@pytest.mark.parametrize("kind", ["inflora", "ranpac"])
def test_method_statistics_under_the_gpus_bf16_equal_float32(kind):
    device = torch.device("cuda")
    exact, exact_logits = two_tasks_of_statistics("32-true", kind, device)
    mixed, mixed_logits = two_tasks_of_statistics("bf16-mixed", kind, device)
    for name, value in exact.items():
        torch.testing.assert_close(mixed[name], value, msg=f"{kind}'s {name} moved under bf16")
    if kind == "ranpac":
        torch.testing.assert_close(mixed_logits, exact_logits)


@pytest.mark.parametrize("knob", ["train.channels_last=true", "train.compile=true", "train.fused_adam=true",
                                  "train.tf32=true"])
def test_throughput_knobs_train(knob):
    convolutional = ["benchmark.num_tasks=2", "benchmark.max_train_per_class=40", "model.weights=random"]
    trainer = fit(knob, base=convolutional if knob == "train.channels_last=true" else TINY_VIT)
    assert len(trainer.state.accuracy_matrix) == 2


def test_pinned_memory_and_the_decoded_cache_on_the_device(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from input_pipeline import write_folder

    write_folder(tmp_path, 80, classes=20)
    cfg = load_config(REPO / "configs" / "paper" / "imagenet_r_lora.yaml",
                      ["model.weights=random", f"benchmark.root={tmp_path}", "benchmark.num_tasks=1", *CUDA,
                       "train.head_only_epochs=0", "train.batch_size=16", "model.backbone_kwargs={depth: 5}",
                       "train.data_workers=1"])
    model, benchmark, objective = build_job(cfg)
    trainer = ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cuda")))
    loader = trainer._train_loader(benchmark.tasks[0])
    images, _, _ = next(iter(loader))
    assert loader.pin_memory and images.is_pinned()
    trainer.fit()
    assert len(trainer.state.accuracy_matrix) == 1


def test_a_ray_train_run_with_one_gpu_worker(workdir):
    result = run_aepg(["train", str(CONFIGS / "digits.yaml"), *TINY_VIT, "train.epochs=1", "scaling.num_workers=1",
                       "scaling.use_gpu=true", "run_name=gpu-worker"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id],
                                filter_string="attributes.run_name = 'gpu-worker'")
    assert run.info.status == "FINISHED"


def test_two_trials_share_one_gpu(workdir):
    sweep = {"name": "shared-gpu", "base_config": str(CONFIGS / "digits.yaml"),
             "space": {"train.lr": {"choice": [0.001, 0.003]}}, "search": {"algorithm": "grid", "max_concurrent": 2},
             "scheduler": {"kind": "none"}, "trial": {"cpus": 1, "gpus": 0.5}}
    path = workdir / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    result = run_aepg(["sweep", str(path), *(f"base_overrides.{o}" for o in [*TINY_VIT, *CUDA])], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2/2 trials" in result.stdout
