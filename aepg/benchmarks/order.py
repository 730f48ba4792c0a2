"""A benchmark's class order and its tasks: a seeded permutation of the class ids cut into
near-equal consecutive groups. Numpy only, so a run can be sized before any compute."""

from __future__ import annotations

import numpy as np


def class_order(num_classes: int, seed: int) -> list[int]:
    """The seeded permutation of class ids that fixes which classes each task gets."""
    return [int(c) for c in np.random.default_rng(seed).permutation(num_classes)]


def task_groups(order: list[int], num_tasks: int) -> list[list[int]]:
    """The classes of each task, in class order: the first ``len % num_tasks`` groups get one more."""
    return [[int(c) for c in group] for group in np.array_split(np.array(order), num_tasks)]
