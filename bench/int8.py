"""Figure 6: int8 models vs fp32, speed-up and accuracy drop on the JapaneseVowels test set.

Each repository model is quantized here, in a temporary folder, by the code export.py's `--int8`
uses (model/quantize.py: int8 weights, activations quantized per call). onnxruntime turns LSTM
nodes into `com.microsoft.DynamicQuantizeLSTM`; it has no int8 GRU, so a GRU model gets only its
MatMuls (attention, head) quantized: its recurrent layers stay fp32. Both models run with the
server's session options; speed is timed alternately, round by round.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Mode, feeds_for, figure, median_ratio, paired_times, runtime_for
from seqserve.inference import pad
from seqserve.model.quantize import compare, quantize_int8, recurrent_layers_quantized
from seqserve.repository import MODEL_FILE


def measure(name: str, mode: Mode, folder: Path, sequences, targets) -> dict[str, Any]:
    fp32 = runtime_for(name)
    folder.mkdir(parents=True, exist_ok=True)
    ops = quantize_int8(fp32.version.model_file, folder / MODEL_FILE)
    int8 = runtime_for(name, folder=folder)
    comparison = compare(fp32.session, int8.session, fp32.arch, sequences, targets)
    speed: dict[str, Any] = {}
    longest = max(sequences, key=len)
    for batch in (1, 64):
        group = [longest] if batch == 1 else sequences[:batch]
        x, lengths = pad(group, fp32.arch.input_size)
        f32, f8 = feeds_for(fp32, x, lengths), feeds_for(int8, x, lengths)
        runs = {"fp32": partial(fp32.session.run, None, f32), "int8": partial(int8.session.run, None, f8)}
        times = paired_times(runs, mode.rounds, mode.min_time)
        speed[f"b{batch}"] = {"speedup": median_ratio(times["fp32"], times["int8"]),
                              "fp32_ms": 1e3 * float(np.median(times["fp32"])),
                              "int8_ms": 1e3 * float(np.median(times["int8"]))}
    recurrent_int8 = recurrent_layers_quantized(ops)
    return {"fp32_accuracy": comparison.fp32_accuracy, "int8_accuracy": comparison.int8_accuracy,
            "accuracy_drop": comparison.accuracy_drop,
            "max_abs_logits_difference": comparison.max_abs_logits_difference, "speed": speed,
            "int8_ops": ops, "recurrent_layers_quantized": recurrent_int8,
            "note": "" if recurrent_int8 else "no int8 kernel for this cell: only MatMuls around it are int8"}


def run(mode: Mode, models: list[str]) -> dict[str, dict]:
    from bench.common import test_sequences

    sequences, targets, _ = test_sequences()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for name in models:
            r = measure(name, mode, Path(tmp) / name, sequences, targets)
            figures[f"int8.{name}.speedup"] = figure(
                r["speed"]["b64"]["speedup"], None, None, "x (fp32 time / int8 time, batch 64 test sequences)",
                **r)
            figures[f"int8.{name}.accuracy_drop"] = figure(
                r["accuracy_drop"], None, None, "fp32 accuracy - int8 accuracy (JapaneseVowels test, 370)",
                fp32_accuracy=r["fp32_accuracy"], int8_accuracy=r["int8_accuracy"])
    return figures
