"""The continual classifier: a frozen timm backbone (``backbones``), a PEFT module (``peft``) and
one linear head (``classifier``). ``facts`` describes a backbone without building it again, so
configs are checked against it before any compute."""


class WeightsError(RuntimeError):
    """Pretrained weights could not be found, verified or fitted to the backbone."""
