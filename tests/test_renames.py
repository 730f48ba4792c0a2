"""The one rename table: an old name in any config layer (a file of an ``extends`` chain, a
command-line override, a sweep's ``base_overrides`` and space) means exactly what its new name
would, whatever the layers below it say; params and tags logged under an old name read as today's."""

import logging

import pytest
import yaml

from aepg.config import current_key, load_config, logged_param, tag_of
from aepg.config import renames
from aepg.config.renames import CONFIG_RENAMES, TAG_RENAMES

from conftest import CONFIGS

DIGITS = CONFIGS / "digits.yaml"

# For each renamed key: a value that differs from what the lower layer holds under the new name,
# and the overrides under which the new key is active (the entry that has it).
SAMPLES = {
    "model.peft": ({"kind": "lora", "rank": 6}, []),
    "schedule": ({"kind": "sigmoid", "tau": 3.0}, []),
    "model.method.lae": (True, ["model.method.parts.lae.enabled=false"]),
    "model.method.lae_decay": (0.99, ["model.method.parts.lae.decay=0.999"]),
    "train.autocast": (False, ["train.precision=auto"]),
    "train.momentum": (0.5, ["train.optimizer=sgd"]),
    "train.nesterov": (True, ["train.optimizer=sgd"]),
    "train.warmup_epochs": (1, []),
    "train.lr_milestones": ([2], ["train.lr_schedule=step", "train.lr_schedule.milestones=[1]"]),
    "train.lr_gamma": (0.5, ["train.lr_schedule=step", "train.lr_schedule.milestones=[1]"]),
    "benchmark.split_seed": (3, ["benchmark.dataset=imagenet-r"]),
    "benchmark.cache": ("none", ["benchmark.dataset=imagenet-r"]),
    "benchmark.short_side": (64, ["benchmark.dataset=imagenet-r"]),
    "benchmark.cache_dir": ("/tmp/elsewhere", ["benchmark.dataset=imagenet-r"]),
    "benchmark.cache_key": ("content", ["benchmark.dataset=imagenet-r"]),
    "benchmark.on_bad_image": ("skip", ["benchmark.dataset=imagenet-r"]),
}


def nested(dotted: str, value) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


@pytest.fixture
def lower(tmp_path):
    """A shipped config with overrides applied, written out under today's names: the layer below."""
    def write(overrides):
        path = tmp_path / "lower.yaml"
        path.write_text(yaml.safe_dump(load_config(DIGITS, overrides).model_dump(mode="json")))
        return path
    return write


def test_every_renamed_key_has_a_sample():
    assert set(SAMPLES) == {rename.old for rename in CONFIG_RENAMES}


@pytest.mark.parametrize("rename", CONFIG_RENAMES, ids=lambda rename: rename.old)
def test_an_old_name_over_a_layer_with_the_new_name_means_the_new_name(rename, lower, tmp_path):
    value, context = SAMPLES[rename.old]
    below = lower(context)
    resolved = {}
    for name, written in (("old", nested(rename.old, value)), ("new", nested(rename.new, rename.value(value)))):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"extends": "lower.yaml", **written}))
        resolved[name] = load_config(tmp_path / f"{name}.yaml").model_dump()
    assert resolved["old"] == resolved["new"]
    assert resolved["new"] != load_config(below).model_dump(), "the upper layer's value must change something"


@pytest.mark.parametrize("rename", CONFIG_RENAMES, ids=lambda rename: rename.old)
def test_an_old_name_on_the_command_line_wins_as_the_new_name(rename, lower):
    value, context = SAMPLES[rename.old]
    below = lower(context)
    as_text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    old = load_config(below, [f"{rename.old}={as_text}"])
    new_text = yaml.safe_dump(rename.value(value), default_flow_style=True).strip().removesuffix("...").strip()
    assert old.model_dump() == load_config(below, [f"{rename.new}={new_text}"]).model_dump()
    assert old.model_dump() != load_config(below).model_dump()


def test_a_sweep_with_old_names_over_a_base_config_with_new_ones(tmp_path):
    """``base_overrides`` and space keys under old names, over ``configs/digits.yaml`` (new names):
    the linear probe of the overrides leaves LoRA's rank unused, so the sweep is refused as the
    same sweep written with new names is."""
    from aepg.config import ConfigError
    from aepg.sweep.checks import load_sweep

    sweeps = {}
    for name, method, rank in (("old", "peft", "model.peft.rank"), ("new", "method", "model.method.rank")):
        sweep = {"name": name, "base_config": str(DIGITS), "base_overrides": {"model": {method: {"kind": "none"}}},
                 "search": {"algorithm": "random", "num_trials": 4}, "space": {rank: {"int": [2, 8]}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(sweep))
        with pytest.raises(ConfigError) as refused:
            load_sweep(tmp_path / f"{name}.yaml", check_runs=False)
        sweeps[name] = refused.value.problems
    assert sweeps["old"] == sweeps["new"] and "no trial would use it" in sweeps["new"][0][1]
    good = {"name": "old", "base_config": str(DIGITS), "base_overrides": {"schedule": {"tau": 3.0}},
            "search": {"algorithm": "grid"}, "space": {"model.peft.rank": {"choice": [2, 4]}},
            "compare": {"objective.kind": ["ce", "aepg"]}, "scheduler": {"kind": "none", "fidelity": "seeds"},
            "seeds": [0, 1]}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    loaded = load_sweep(tmp_path / "good.yaml", check_runs=False)
    assert list(loaded.space) == ["model.method.rank"] and loaded.base_config.annealing.tau == 3.0


def test_the_notice_is_said_once_per_key(caplog, monkeypatch):
    monkeypatch.setattr(renames, "_SAID", set())
    with caplog.at_level(logging.WARNING, logger="aepg"):
        for _ in range(2):
            load_config(DIGITS, ["model.peft.rank=6", "schedule.tau=3"])
    assert caplog.text.count("model.peft is deprecated since aepg 0.1.0: read as model.method") == 1
    assert caplog.text.count("schedule is deprecated since aepg 0.1.0: read as annealing") == 1
    assert renames._SAID == {"model.peft", "schedule"}


def test_params_and_tags_logged_under_old_names_read_as_todays():
    params = {"model.peft.kind": "lora", "model.peft.lae": "True", "train.autocast": "False",
              "benchmark.split_seed": "2"}
    assert logged_param(params, "model.method.kind") == "lora"
    assert logged_param(params, "model.method.parts.lae.enabled") == "True"
    assert logged_param(params, "train.precision") == "32-true"
    assert logged_param(params, "benchmark.dataset.split_seed") == "2"
    assert logged_param({"model.method.kind": "dora", **params}, "model.method.kind") == "dora", "today's name first"
    assert logged_param(params, "model.method.rank") is None
    for rename in TAG_RENAMES:
        assert tag_of({rename.old: "x"}, rename.new) == "x" and tag_of({rename.new: "y", rename.old: "x"}, rename.new) == "y"
    assert current_key("model.peft.parts.lae.decay", quiet=True) == "model.method.parts.lae.decay"
