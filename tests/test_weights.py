"""Pretrained weights through the real loading code: the offline Lite0 file and a timm checkpoint."""

import shutil

import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from aepg.models import backbones
from aepg.models.backbones import WeightsError, create_backbone, lite0_state_dict


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
        assert torch.equal(model(x).topk(3).indices[0], torch.tensor(top3)), "prediction not stable"
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
