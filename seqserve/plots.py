"""Pictures of one prediction, for `seqserve.cli encode|stream --plot FILE.png` (needs the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib is the `plot` extra's, imported only when a picture is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> ModuleType:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'seqserve[plot]'") from None
    return plt


def _save(fig: Figure, path: Path) -> None:
    """Write the figure as a PNG at `path`, making its folder if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _features_panel(ax: Axes, steps: np.ndarray, title: str) -> None:
    """steps (T, F) as a heatmap: one row per coefficient, time along x."""
    from matplotlib.ticker import MaxNLocator

    image = ax.imshow(steps.T, aspect="auto", origin="lower", cmap="coolwarm", interpolation="nearest",
                      extent=(-0.5, len(steps) - 0.5, -0.5, steps.shape[1] - 0.5))
    ax.set_ylabel("coefficient")
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))  # steps are whole numbers
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, pad=0.01)


def plot_encoding(path: Path, steps: np.ndarray, probabilities: np.ndarray, labels: list[str],
                  attention: np.ndarray | None, title: str) -> None:
    """One sequence: its features over time, the attention over the same steps, the class probabilities."""
    plt = _pyplot()
    rows = 3 if attention is not None else 2
    fig = plt.figure(figsize=(9, 2.6 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, 1, height_ratios=[2] + [1] * (rows - 1))
    features = fig.add_subplot(grid[0])
    _features_panel(features, steps, title)  # (T, F)
    if attention is not None:
        ax = fig.add_subplot(grid[1], sharex=features)
        ax.bar(np.arange(len(attention)), attention, color="tab:orange")  # (T,)
        ax.set_ylabel("attention")
        ax.set_xlabel("step")
    ax = fig.add_subplot(grid[-1])
    best = int(np.argmax(probabilities))
    colors = ["tab:blue" if i != best else "tab:green" for i in range(len(probabilities))]
    ax.bar(labels, probabilities, color=colors)  # (C,)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.set_xlabel("class")
    _save(fig, path)
    plt.close(fig)


def plot_stream(path: Path, steps: np.ndarray, step_probabilities: np.ndarray, labels: list[str],
                chunk_ends: list[int], title: str) -> None:
    """A streamed sequence: features over time and the running class probabilities after every step."""
    plt = _pyplot()
    fig, (features, running) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, layout="constrained")
    _features_panel(features, steps, title)  # (T, F)
    image = running.imshow(step_probabilities.T, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                           interpolation="nearest",
                           extent=(-0.5, len(steps) - 0.5, -0.5, len(labels) - 0.5))  # (C, T)
    running.plot(np.arange(len(steps)), step_probabilities.argmax(axis=1), color="white", lw=1.2,
                 drawstyle="steps-mid", label="predicted class")
    for end in chunk_ends[:-1]:
        running.axvline(end - 0.5, color="white", ls=":", lw=0.8)
    running.set_yticks(range(len(labels)), labels)
    running.set_ylabel("class")
    running.set_xlabel("step (dotted: chunk boundaries)")
    running.legend(loc="upper right", fontsize="small")
    fig.colorbar(image, ax=running, pad=0.01, label="probability")
    _save(fig, path)
    plt.close(fig)
