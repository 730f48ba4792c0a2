"""aepg: continual fine-tuning of pretrained vision models with the annealed Expected Policy Gradient."""

__version__ = "0.2.0"
