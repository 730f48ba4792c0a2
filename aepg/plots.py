"""Figures for runs and sweeps (matplotlib, no display needed), each titled with what it shows."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from aepg.metrics import running_best  # noqa: E402

STATUS_STYLE = {
    "finished": dict(marker="o", color="tab:blue", label="finished (final value)"),
    "stopped early": dict(marker="o", facecolors="none", edgecolors="tab:orange", label="stopped early (value when stopped)"),
    "failed": dict(marker="x", color="tab:red", label="failed"),
    "confirmed": dict(marker="D", color="tab:green", label="confirmed on fresh seeds (ranked first)"),
}


def accuracy_heatmap(R: list[list[float]], title: str):
    """R[i][j] as a lower-triangular heatmap with the values written in."""
    n = len(R)
    grid = np.full((n, n), np.nan)
    for i, row in enumerate(R):
        grid[i, : len(row)] = row
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * n, 1.2 + 0.6 * n))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(n):
        for j in range(i + 1):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="white" if grid[i, j] < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
    ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task i")
    ax.set_title(f"{title}\naccuracy R[i][j]", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


SERIES_LIMITS = {"a_t": (0.0, 1.02), "p_y": (0.0, 1.02)}
"""Fixed y limits of the bounded series, so that two runs' plots compare by eye; others start at 0."""


def series_plot(series: dict[str, tuple[list[int], list[float]]], title: str, boundaries: list[int] = (),
                xlabel: str = "optimiser step"):
    """One panel per named series (x, y) on a shared x axis, with the task boundaries dashed."""
    fig, axes = plt.subplots(len(series), 1, figsize=(7.5, 2.1 * len(series) + 0.6), sharex=True, squeeze=False)
    for ax, (name, (x, y)) in zip(axes[:, 0], series.items()):
        ax.plot(x, y, lw=1.1)
        for step in boundaries:
            ax.axvline(step, color="0.6", ls="--", lw=0.8)
        ax.set_ylabel(name)
        if name in SERIES_LIMITS:
            ax.set_ylim(*SERIES_LIMITS[name])
        elif min(y, default=0.0) >= 0:
            ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel + ("  (dashed: task boundaries)" if boundaries else ""))
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def trials_plot(trials: list[dict], metric: str, mode: str, title: str, best: int | None = None):
    """Each trial's metric in start order. Finished trials (at their final value) and failed ones (at
    the bottom) share the top panel with the best finished value so far, and the configurations a
    confirmation stage trained again (``stage: confirm``) at their confirmation mean; ``best``, the
    index of the sweep's declared best, is starred. Trials stopped early get a panel of their own,
    at the value they had when stopped and the tasks they covered, so a partial value never sits
    above a finished one."""
    confirmed = [t for t in trials if t.get("stage") == "confirm"]
    trials = [t for t in trials if t.get("stage") != "confirm"]
    stopped = [t for t in trials if t["status"] == "stopped early" and t["value"] is not None]
    fig, axes = plt.subplots(2 if stopped else 1, 1, figsize=(8, 6.5 if stopped else 4.5), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]} if stopped else None)
    ax = axes[0, 0]
    finite = [t["value"] for t in trials if t["status"] == "finished" and t["value"] is not None
              and math.isfinite(t["value"])]
    floor = min(finite) if finite else 0.0
    for status in ("finished", "failed"):
        points = [(t["index"], t["value"] if status == "finished" and t["value"] is not None
                   and math.isfinite(t["value"]) else floor) for t in trials if t["status"] == status]
        if points:
            ax.scatter(*zip(*points), zorder=3, **STATUS_STYLE[status])
    ordered = sorted(trials, key=lambda t: t["index"])
    running = running_best([t["value"] if t["status"] == "finished" else None for t in ordered], mode)
    ax.step([t["index"] for t in ordered], [np.nan if b is None else b for b in running], where="post", color="0.4",
            label="best finished so far" + (" (search)" if confirmed else ""))
    points = [(t["index"], t["value"]) for t in confirmed if t["status"] == "finished" and t["value"] is not None]
    if points:
        ax.scatter(*zip(*points), zorder=3, **STATUS_STYLE["confirmed"])
    declared = next((t for t in confirmed + trials if t["index"] == best and t["value"] is not None), None)
    if declared:
        ax.scatter([declared["index"]], [declared["value"]], marker="*", s=260, facecolors="none", edgecolors="k",
                   zorder=4, label=f"declared best: {declared['value']:.4f}")
    ax.set_ylabel(f"final/{metric}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if stopped:
        low = axes[1, 0]
        low.scatter([t["index"] for t in stopped], [t["value"] for t in stopped], zorder=3,
                    **STATUS_STYLE["stopped early"])
        for t in stopped:
            low.annotate(t["progress"], (t["index"], t["value"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        low.set_ylabel(f"{metric}\nwhen stopped")
        low.set_title("stopped early: partial values over fewer tasks, not comparable with the panel above", fontsize=9)
        low.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("trial (start order)")
    fig.tight_layout()
    return fig


def front_plot(points: list[dict], x: tuple[str, str], y: tuple[str, str], title: str):
    """A trade-off: each configuration (``name``, ``x``, ``y``, their ``x_std``/``y_std`` over seeds,
    its front ``mark``, its ``group`` for the colour, ``best``) at its seed-means with its spread,
    the front drawn as a step through its points, configurations off the front only within noise
    hollow, ``best`` starred. Axes say which way is better."""
    fig, ax = plt.subplots(figsize=(7, 5))
    groups = sorted({p["group"] for p in points})
    colour = {group: plt.get_cmap("tab10")(i % 10) for i, group in enumerate(groups)}
    for p in points:
        filled = p["mark"] == "front"
        ax.errorbar(p["x"], p["y"], xerr=p["x_std"], yerr=p["y_std"], fmt="o", ms=7, capsize=3,
                    color=colour[p["group"]], mfc=colour[p["group"]] if filled or not p["mark"] else "none",
                    alpha=1.0 if p["mark"] else 0.45, zorder=3)
        ax.annotate(p["name"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if p["best"]:
            ax.scatter([p["x"]], [p["y"]], marker="*", s=300, facecolors="none", edgecolors="k", zorder=4)
    on = sorted((p["x"], p["y"]) for p in points if p["mark"] == "front")
    if on:
        ax.step([q[0] for q in on], [q[1] for q in on], where="post" if (x[1] == "max") == (y[1] == "max") else "pre",
                color="0.3", lw=1, ls="--", label="Pareto front")
    for group in groups:
        ax.scatter([], [], color=colour[group], label=group or "configurations")
    ax.scatter([], [], facecolors="none", edgecolors="0.3", label="off the front within seed noise")
    ax.scatter([], [], marker="*", s=120, facecolors="none", edgecolors="k", label="best.yaml")
    ax.set_xlabel(f"final/{x[0]} ({'higher' if x[1] == 'max' else 'lower'} is better)")
    ax.set_ylabel(f"final/{y[0]} ({'higher' if y[1] == 'max' else 'lower'} is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def convergence_plot(points: list[tuple[float, float | None]], budget: float | None, metric: str, title: str):
    """Best finished value so far against compute spent (tasks trained, in the order trials ended);
    ``budget`` marks what every trial trained to the end would cost."""
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [x for x, _ in points]
    ys = [y if y is not None else np.nan for _, y in points]
    ax.step(xs, ys, where="post", color="tab:blue", marker="o", ms=3)
    if budget:
        ax.axvline(budget, color="0.5", ls="--", lw=0.8, label="every trial to the end")
        ax.legend(fontsize=8)
    ax.set_xlabel("compute spent (tasks trained)")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def parallel_coordinates(rows: list[dict[str, object]], keys: list[str], metric: str, mode: str, title: str):
    """One line per finished trial across an axis per searched key (scaled to [0, 1]; categories
    spaced evenly, log scale for ranges over a decade), coloured by the metric on a dark-to-bright
    map with the best trial drawn last and thickest."""
    fig, ax = plt.subplots(figsize=(1.9 * len(keys) + 2.5, 4.6))
    values = np.array([float(r[metric]) for r in rows])
    lo, hi = float(values.min()), float(values.max())
    norm = plt.Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = matplotlib.colormaps["viridis"]
    axes_ticks = []
    positions = np.zeros((len(rows), len(keys)))
    for j, key in enumerate(keys):
        column = [r.get(key) for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column if v is not None)
        present = [v for v in column if v is not None]
        if numeric and len(set(present)) > 1:
            arr = np.array([np.nan if v is None else float(v) for v in column])
            log = min(present) > 0 and max(present) / min(present) > 10
            scaled = np.log10(arr) if log else arr
            a, b = np.nanmin(scaled), np.nanmax(scaled)
            positions[:, j] = np.where(np.isnan(scaled), -0.08, (scaled - a) / (b - a))
            ticks = np.linspace(a, b, 3)
            labels = [f"{(10 ** t if log else t):.3g}" for t in ticks]
            axes_ticks.append(([0.0, 0.5, 1.0], labels))
        else:
            text = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
            cats = sorted({text(v) for v in present})
            place = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            positions[:, j] = [place[text(v)] if v is not None else -0.08 for v in column]
            axes_ticks.append(([place[c] for c in cats], cats))
        if any(v is None for v in column):
            axes_ticks[-1] = (axes_ticks[-1][0] + [-0.08], axes_ticks[-1][1] + ["(inactive)"])
    order = np.argsort(values if mode == "max" else -values)
    for rank, i in enumerate(order):
        best = rank == len(order) - 1
        ax.plot(range(len(keys)), positions[i], color=cmap(0.1 + 0.8 * norm(values[i])), lw=3.0 if best else 1.4,
                alpha=0.95, zorder=2 + rank)
    for j, (ticks, labels) in enumerate(axes_ticks):
        ax.axvline(j, color="0.3", lw=0.8, zorder=1)
        for t, label in zip(ticks, labels):
            ax.text(j + 0.03, t, label, fontsize=9, va="center", ha="left",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5), zorder=100)
    ax.set_xticks(range(len(keys)), [k.replace(".", ".\n", 1) for k in keys], fontsize=9)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.08)
    ax.set_xlim(-0.2, len(keys) - 0.5)
    ax.set_facecolor("white")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=matplotlib.colors.ListedColormap(cmap(np.linspace(0.1, 0.9, 256)))),
                 ax=ax, label=metric, fraction=0.04)
    ax.set_title(title + ("  (below an axis: the key was inactive)" if np.any(positions < 0) else ""), fontsize=10)
    fig.tight_layout()
    return fig


def paired_plot(rows: list[dict], metrics: list[str], arms: tuple[str, str], title: str):
    """One panel per metric: each configuration's difference of the last arm minus the first, paired
    over seeds, with its 95% interval (``rows``: name, and per metric (mean, half, n)), best on top,
    zero marked; a difference whose interval excludes zero is drawn solid, one across it hollow."""
    names = [row["name"] for row in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1.5, 1.2 + 0.45 * len(rows)), sharey=True,
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for y, row in enumerate(rows):
            mean, half, n = row[metric]
            separated = half is not None and (mean - half > 0 or mean + half < 0)
            ax.errorbar(100 * mean, y, xerr=None if half is None else 100 * half, fmt="o", capsize=4, color="tab:purple",
                        mfc="tab:purple" if separated else "white")
            ax.annotate(f"n={n}", (100 * mean, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
        ax.axvline(0.0, color="0.3", lw=1)
        ax.set_xlabel(f"{arms[1]} - {arms[0]}, {metric} (points)")
        ax.grid(axis="x", color="0.9")
    axes[0, 0].set_yticks(range(len(rows)), names)
    axes[0, 0].invert_yaxis()
    fig.suptitle(f"{title}\n95% intervals over the seeds both arms trained; solid: the interval excludes 0",
                 fontsize=9)
    fig.tight_layout()
    return fig
