"""Optuna samplers that Ray Tune can save with its searcher (Tune pickles the searcher, sampler and all)."""

from __future__ import annotations

import threading

import optuna


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler, which Ray can save with the searcher: Optuna's genetic samplers
    hold a thread lock, which cannot be pickled; it is made anew when the sampler is loaded."""

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_thread_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _thread_lock=threading.Lock())
