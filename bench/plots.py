"""PNG plots: latency vs concurrency, throughput vs batch size, onnxruntime vs PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from bench.serving import CONCURRENCY, MODES, PER_CALL, PER_CALL_CONCURRENCY, pick

matplotlib.use("Agg")  # files only, whatever the environment's default backend


def save(fig, path: Path) -> None:
    """Lay the figure out, write it as a PNG and free it (every bench plot)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _median(reps: list[dict[str, Any]], server: str, mode: str, c: int, key: str, per_call: int = 1) -> float:
    return float(np.median([pick(rep["loadgen"], server, mode, c, per_call)[key] for rep in reps]))


def latency_vs_concurrency(serving: dict[str, Any], path: Path) -> None:
    reps = serving["reps"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        for server, style in (("server", "-"), ("echo", "--")):
            for key, marker in (("p50_ms", "o"), ("p99_ms", "^")):
                ys = [_median(reps, server, mode, c, key) for c in CONCURRENCY]
                ax.plot(CONCURRENCY, ys, style, marker=marker, label=f"{server} {key[:3]}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients (one sequence per call)")
        ax.set_title(f"{serving['model']}: {mode}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend()
    save(fig, path)


def throughput_vs_batch(serving: dict[str, Any], path: Path) -> None:
    reps = serving["reps"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for order, marker in (("random", "o"), ("sorted", "s")):
        batches = sorted(int(b) for b in reps[0]["ort_sweep"][order])
        ys = [float(np.median([rep["ort_sweep"][order][str(b)] for rep in reps])) for b in batches]
        ax.plot(batches, ys, marker=marker, label=f"onnxruntime in-process, {order} batches")
    lines = [("server", "unary", 64, 1, "served, unary, 64 clients"),
             ("server", "stream", 64, 1, "served, stream, 64 clients"),
             ("server", "unary", PER_CALL_CONCURRENCY, PER_CALL, f"served, {PER_CALL} seq/call"),
             ("echo", "unary", 64, 1, "echo (no model), unary, 64 clients")]
    for (server, mode, c, k, label), color in zip(lines, ("C2", "C3", "C4", "C7"), strict=True):
        ax.axhline(_median(reps, server, mode, c, "seqs_per_s", k), color=color, linestyle=":", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("onnxruntime batch size (sequences)")
    ax.set_ylabel("sequences / s")
    ax.set_title(f"{serving['model']}: throughput vs batch size (JapaneseVowels test)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def runtime_speedups(figures: dict[str, dict], path: Path) -> None:
    models = [name for name in figures if name.startswith("runtime.")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(models))
    labels: list[str] = []
    for i, name in enumerate(models):
        cells = figures[name]["details"]["cells"]
        labels = [f"B{c['batch']} T{c['time']}" for c in cells]
        ax.bar(np.arange(len(cells)) + i * width, [c["speedup"] for c in cells], width, label=name[len("runtime."):])
    ax.axhline(1.5, color="k", linestyle=":", label="goal at batch 1")
    ax.set_xticks(np.arange(len(labels)) + width * (len(models) - 1) / 2, labels, rotation=45, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("PyTorch time / onnxruntime time")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    save(fig, path)


def write_all(figures: dict[str, dict], raw: dict[str, Any], out_dir: Path) -> list[Path]:
    written = []
    if "serving" in raw:
        for name, draw in (("latency_vs_concurrency.png", latency_vs_concurrency),
                           ("throughput_vs_batch.png", throughput_vs_batch)):
            draw(raw["serving"], out_dir / name)
            written.append(out_dir / name)
    if any(n.startswith("runtime.") for n in figures):
        runtime_speedups(figures, out_dir / "runtime_speedup.png")
        written.append(out_dir / "runtime_speedup.png")
    return written
