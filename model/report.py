"""A fit's report in its run folder: learning curves, a confusion matrix (classify) or predicted-vs-true
scatter (regress) as PNG, and the metrics as JSON.

    learning_curves.png    loss and score (accuracy or RMSE) per epoch, training and validation
    confusion_matrix.png   classify: test counts, true class by row, predicted class by column
    predicted_vs_true.png  regress: every test prediction against its target, one panel per target
    metrics.json           what model.fit printed, with the per-class or per-target test figures
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .train import EpochMetrics

METRICS_FILE = "metrics.json"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
SCATTER_FILE = "predicted_vs_true.png"
SCORE_AXIS = {"acc": "accuracy", "rmse": "RMSE (target units)"}
LOSS_AXIS = {"acc": "cross-entropy", "rmse": "squared error / target std²"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def plot_learning_curves(history: Sequence[EpochMetrics], metric: str, path: Path, title: str) -> None:
    """Loss (log scale) and score per epoch, training beside validation."""
    plt = _pyplot()
    epochs = [m.epoch for m in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [m.train_loss for m in history], label="train")
    ax_loss.plot(epochs, [m.val_loss for m in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel=LOSS_AXIS[metric], yscale="log", title="loss")
    ax_score.plot(epochs, [m.train_score for m in history], label="train")
    ax_score.plot(epochs, [m.val_score for m in history], label="validation")
    ax_score.set(xlabel="epoch", ylabel=SCORE_AXIS[metric], title=SCORE_AXIS[metric])
    if metric == "acc":
        ax_score.set_ylim(0, 1.01)
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def confusion_matrix(predicted: np.ndarray, true: np.ndarray, classes: int) -> np.ndarray:
    """Counts (C, C): row = true class index, column = predicted class index."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def plot_confusion_matrix(counts: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    plt = _pyplot()
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues")  # (C, C)
    for (row, col), count in np.ndenumerate(counts):
        if count:
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if count > counts.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, pad=0.02, label="test sequences")
    _save(fig, path)


def plot_predicted_vs_true(predicted: np.ndarray, true: np.ndarray, names: Sequence[str], path: Path,
                           title: str) -> None:
    """predicted, true (N, K): one scatter per target, with the line where they are equal."""
    plt = _pyplot()
    K = true.shape[1]
    rmse = per_target_rmse(predicted, true)  # (K,)
    fig, axes = plt.subplots(1, K, figsize=(4.5 * K, 4.5), squeeze=False)
    for k, ax in enumerate(axes[0]):
        low, high = float(min(true[:, k].min(), predicted[:, k].min())), float(max(true[:, k].max(),
                                                                                    predicted[:, k].max()))
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="predicted = true")
        ax.scatter(true[:, k], predicted[:, k], s=14, alpha=0.7)  # (N,) against (N,)
        ax.set(xlabel=f"true {names[k]}", ylabel=f"predicted {names[k]}", title=f"RMSE {rmse[k]:.4g}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle(title)
    _save(fig, path)


def per_target_rmse(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """RMSE of each target column, in float64: predicted, true (N, K) -> (K,)."""
    error = predicted.astype(np.float64) - true.astype(np.float64)  # (N, K)
    return np.sqrt(np.mean(error**2, axis=0))


def per_class_accuracy(counts: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """Recall of every class on the test set (None for a class with no test sequence)."""
    totals = counts.sum(axis=1)
    return {label: (float(counts[i, i] / totals[i]) if totals[i] else None) for i, label in enumerate(labels)}


def write_classification_report(out: Path, result: dict[str, Any], predicted: np.ndarray, true: np.ndarray,
                                labels: Sequence[str]) -> None:
    """confusion_matrix.png and metrics.json for a classifier's test answers (N,) (train() drew the curves)."""
    counts = confusion_matrix(predicted, true, len(labels))
    title = f"{result['name']} v{result['version']}: test accuracy {result['test_accuracy']:.4f}"
    plot_confusion_matrix(counts, labels, out / CONFUSION_FILE, title)
    _write(out, result, {"per_class_test_accuracy": per_class_accuracy(counts, labels),
                                         "confusion_matrix": counts.tolist(), "class_labels": list(labels)})


def write_regression_report(out: Path, result: dict[str, Any], predicted: np.ndarray, true: np.ndarray,
                            names: Sequence[str]) -> None:
    """predicted_vs_true.png and metrics.json for a regression's test answers (N, K) (train() drew the curves)."""
    title = f"{result['name']} v{result['version']}: test RMSE {result['test_rmse']:.4g}"
    plot_predicted_vs_true(predicted, true, names, out / SCATTER_FILE, title)
    per_target = per_target_rmse(predicted, true)  # (K,)
    _write(out, result, {"per_target_test_rmse": dict(zip(names, per_target.tolist(), strict=True))})


def _write(out: Path, result: dict[str, Any], details: dict[str, Any]) -> None:
    (out / METRICS_FILE).write_text(json.dumps(result | details, indent=2) + "\n")
