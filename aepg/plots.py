"""Figures for a run's artifacts (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def accuracy_heatmap(R: list[list[float]]):
    """R[i][j] as a lower-triangular heatmap with the values written in."""
    n = len(R)
    grid = np.full((n, n), np.nan)
    for i, row in enumerate(R):
        grid[i, : len(row)] = row
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(n):
        for j in range(i + 1):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="white" if grid[i, j] < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
    ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task i")
    ax.set_title("accuracy R[i][j]")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def series_plot(series: dict[str, tuple[list[int], list[float]]], title: str, xlabel: str = "step"):
    """One panel per named series (x, y), sharing the x axis."""
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.2 * len(series)), sharex=True, squeeze=False)
    for ax, (name, (x, y)) in zip(axes[:, 0], series.items()):
        ax.plot(x, y, lw=1.2)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig


def trials_plot(trials: list[tuple[str, float | None]], metric: str, mode: str):
    """Each trial's metric in start order, marked by status, with the best finished value so far."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"finished": dict(marker="o", color="tab:blue"), "pruned": dict(marker="o", facecolors="none", edgecolors="tab:orange"),
              "failed": dict(marker="x", color="tab:red")}
    finite = [v for _, v in trials if v is not None and np.isfinite(v)]
    floor = min(finite) if finite else 0.0
    for status, style in styles.items():
        points = [(i, v if v is not None and np.isfinite(v) else floor) for i, (s, v) in enumerate(trials, 1) if s == status]
        if points:
            ax.scatter(*zip(*points), label=status, **style)
    best, line = None, []
    for status, value in trials:
        if status == "finished" and value is not None:
            best = value if best is None else (max if mode == "max" else min)(best, value)
        line.append(best if best is not None else np.nan)
    ax.step(range(1, len(trials) + 1), line, where="post", color="tab:gray", label="best finished")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
