"""Pretrained weights through the real loading code: the offline Lite0 file and a timm checkpoint."""

import os
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from aepg.models import backbones
from aepg.models.backbones import WeightsError, create_backbone, lite0_state_dict

from conftest import CONFIGS, run_aepg


def lite0_classifier():
    state = lite0_state_dict()
    return timm.create_model("tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"state_dict": state}).eval()


@torch.no_grad()
def test_lite0_recognises_real_photos():
    model = lite0_classifier()
    transform = create_transform(**resolve_data_config({}, model=model))
    info = ImageNetInfo()
    predictions = {}
    for name in ("china.jpg", "flower.jpg"):
        x = transform(Image.fromarray(load_sample_image(name))).unsqueeze(0)
        top3 = model(x).topk(3).indices[0].tolist()
        predictions[name] = [info.index_to_description(i) for i in top3]
    assert "daisy" in predictions["flower.jpg"][0]
    assert any(word in " ".join(predictions["china.jpg"]) for word in ("palace", "monastery", "temple"))


def test_lite0_backbone_matches_package_weights():
    backbone = create_backbone("tf_efficientnet_lite0", "lite0-offline")
    state = lite0_state_dict()
    weights = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert weights.keys() == {k for k in state if not k.startswith("classifier.")}
    for key, value in weights.items():
        torch.testing.assert_close(value, state[key])
    assert not any(p.requires_grad for p in backbone.parameters())


def test_lite0_refuses_a_file_with_another_hash(tmp_path):
    copy = tmp_path / "lite0.pth"
    shutil.copy(backbones.lite0_package_file(), copy)
    with open(copy, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    with pytest.raises(WeightsError, match="sha256"):
        lite0_state_dict(copy)


def test_vit_checkpoint_round_trip(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = create_backbone("vit_tiny_patch16_224", str(path), image_size=32)
    loaded_state = loaded.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(loaded_state[key], value, msg=key)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), source.eval().forward_head(source.forward_features(x), pre_logits=True))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "lite0_as_vit.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), path)
    with pytest.raises(WeightsError, match="missing tensors"):
        create_backbone("vit_tiny_patch16_224", str(path), image_size=32)


def test_hub_weights_are_checked_in_the_local_cache_before_a_run(tmp_path):
    """Offline, ``hub`` weights must be in the Hugging Face cache: the dry run says so, and once the
    cache holds them (written in its real layout) the run's loading code reads them from it."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "AEPG_CACHE": str(tmp_path / "aepg")}
    args = ["train", str(CONFIGS / "digits.yaml"), "model.weights=hub", "--dry-run"]
    refused = run_aepg(args, cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "HF_HUB_OFFLINE is set" in refused.stderr, refused.stderr[-2000:]
    assert "timm/tf_efficientnet_lite0.in1k" in refused.stderr

    snapshot = tmp_path / "hf" / "hub" / "models--timm--tf_efficientnet_lite0.in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in lite0_state_dict().items()}, snapshot / "model.safetensors")
    accepted = run_aepg(args, cwd=tmp_path, env=env)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    load = ("import torch; from aepg.models.backbones import create_backbone, lite0_state_dict; "
            "b = create_backbone('tf_efficientnet_lite0', 'hub'); s = lite0_state_dict(); "
            "print(all(torch.equal(v, s[k]) for k, v in b.state_dict().items() if k in s))")
    loaded = subprocess.run([sys.executable, "-c", load], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip() == "True", loaded.stderr[-2000:]
