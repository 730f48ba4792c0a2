"""Hyper-parameter sweeps: sweep files, Ray Tune + Optuna driver, reports."""
