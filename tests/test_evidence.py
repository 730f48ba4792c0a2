"""The evidence benchmark (configs/evidence/, sweeps/evidence*.yaml, bench/evidence.py): the preset and
its sweeps validate; a tiny version of it trains end to end through the real CLI, and twice with
the same seed it gives the same metrics and the same final weights, bit for bit."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from aepg.checkpoints import CheckpointStore
from aepg.config import load_config
from aepg.sweep.checks import load_sweep

from conftest import REPO, run_aepg

PRESET = REPO / "configs" / "evidence" / "fashion_mnist_lite0.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["benchmark.num_tasks=2", "train.epochs=1", "benchmark.max_train_per_class=12", "benchmark.max_test_per_class=4",
        "model.image_size=64", "seed=3"]


def test_the_preset_and_its_sweeps_validate():
    cfg = load_config(PRESET)
    assert cfg.benchmark.order_seed is None and cfg.class_order_seed == cfg.seed
    assert cfg.train.prefix_cache and cfg.model.method.blocks == [5, 6]
    main = load_sweep(REPO / "sweeps" / "evidence.yaml", check_runs=False)
    assert main.protocol.kind == "paired" and len(main.grid()) == 6 and main.seeds == list(range(10))
    ablation = load_sweep(REPO / "sweeps" / "evidence_ablation.yaml", check_runs=False)
    assert len(ablation.grid()) == 7 * 10


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_a_tiny_evidence_run_repeats_bit_for_bit(workdir):
    finals, weights = [], []
    for attempt in range(2):
        done = run_aepg(["train", str(PRESET), *TINY, f"run_name=tiny-{attempt}"], workdir)
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("aepg-evidence").experiment_id],
                                    filter_string=f"attributes.run_name = 'tiny-{attempt}'")
        assert run.data.tags["aepg.torch_threads"] and run.data.params["benchmark.order_seed"] == "None"
        finals.append({k: v for k, v in run.data.metrics.items() if k.startswith("final/")})
        snapshot, _ = CheckpointStore(str(workdir / "aepg_runs"), run.info.run_id).load_latest()
        weights.append(snapshot.model)
    assert finals[0] == finals[1] and finals[0]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
