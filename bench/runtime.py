"""Figure 1: onnxruntime vs PyTorch eager on the repository's models, same threads, side by side.

Both run the whole model (normalisation, packed recurrent layers, attention, head) on the same
random input at full length T, every output computed. onnxruntime gets the server's session
options (`server.runtime.ModelRuntime`: intra-op threads = physical cores, sequential
execution, all graph optimisations); PyTorch runs under `torch.inference_mode()` with one
inter-op thread and the same intra-op threads (physical cores), and also with 1 thread: on a
busy 2-core machine PyTorch's OpenMP team stalls for up to seconds when one of its threads is
descheduled, so the figure compares onnxruntime with PyTorch at whichever of the two thread
counts was faster in that round (the stricter comparison for onnxruntime). Both PyTorch
timings are in the details.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import REPOSITORY, THREADS, Mode, at_least, feeds_for, figure, median_ratio, paired_times

GOAL_B1 = 1.5


def set_torch_threads() -> None:
    import torch

    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work already started) in this process
        pass


def measure_model(name: str, mode: Mode) -> dict[str, Any]:
    import torch

    from bench.common import runtime_for
    from seqserve.model.checkpoint import load_checkpoint

    runtime = runtime_for(name)
    module, _ = load_checkpoint(runtime.version.path / "checkpoint.pt")
    cfg = module.config
    mean = np.asarray(cfg.feature_mean or [0.0] * cfg.input_size, dtype=np.float32)
    std = np.asarray(cfg.feature_std or [1.0] * cfg.input_size, dtype=np.float32)
    rng = np.random.default_rng(0)
    cells = []
    for batch in mode.runtime_batches:
        for steps in mode.runtime_times:
            x = (mean + std * rng.standard_normal((batch, steps, cfg.input_size))).astype(np.float32)  # (B, T, F)
            lengths = np.full(batch, steps, dtype=np.int64)
            feeds = feeds_for(runtime, x, lengths)
            xt, lt = torch.from_numpy(x), torch.from_numpy(lengths)

            def ort_call(feeds=feeds) -> object:
                return runtime.session.run(None, feeds)

            def torch_call(threads: int, xt=xt, lt=lt) -> Callable[[], object]:
                def call() -> object:
                    torch.set_num_threads(threads)
                    with torch.inference_mode():
                        return module(xt, lt)

                return call

            calls = {"ort": ort_call, **{f"torch_{n}": torch_call(n) for n in sorted({1, THREADS})}}
            times = paired_times(calls, mode.rounds, mode.min_time)
            torch_best = [min(ts) for ts in zip(*(times[k] for k in calls if k != "ort"), strict=True)]
            cells.append({
                "batch": batch, "time": steps,
                "ort_ms": 1e3 * float(np.median(times["ort"])),
                "torch_ms": 1e3 * float(np.median(torch_best)),
                **{f"{k}_thread_ms": 1e3 * float(np.median(times[k])) for k in calls if k != "ort"},
                "speedup": median_ratio(torch_best, times["ort"]),
                f"speedup_vs_torch_{THREADS}_threads": median_ratio(times[f"torch_{THREADS}"], times["ort"]),
            })
    return {"cell": cfg.cell, "hidden": cfg.hidden_size, "layers": cfg.num_layers,
            "bidirectional": cfg.bidirectional, "cells": cells}


def run(mode: Mode, models: list[str]) -> dict[str, dict]:
    set_torch_threads()
    figures = {}
    for name in models:
        result = measure_model(name, mode)
        b1 = [c["speedup"] for c in result["cells"] if c["batch"] == 1]
        value = min(b1)
        goal, met = at_least(value, GOAL_B1)
        figures[f"runtime.{name}"] = figure(
            value, goal, met, "x (PyTorch at its faster thread count / onnxruntime, worst T at batch 1)",
            threads=THREADS, repository=str(REPOSITORY), **result,
        )
    return figures
