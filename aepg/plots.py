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
