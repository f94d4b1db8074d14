"""Figure 6: int8 models vs fp32, speed-up and accuracy drop on the JapaneseVowels test set.

The repository holds no quantized model, so each model is quantized here, in a temporary
folder: `quant_pre_process` (shape inference and graph clean-up, which leaves LSTM's W and R as
initializers) and then `quantize_dynamic` (int8 weights, activations quantized per call).
onnxruntime turns LSTM nodes into `com.microsoft.DynamicQuantizeLSTM`; it has no int8 GRU, so
a GRU model gets only its MatMuls (attention, head) quantized: its recurrent layers stay fp32.
Both models run with the server's session options; speed is timed alternately, round by round.
"""

from __future__ import annotations

import collections
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bench.common import Mode, feeds_for, figure, median_ratio, pad, paired_times, runtime_for


def quantize(source: Path, folder: Path) -> dict[str, int]:
    """Write folder/model.onnx, the int8 version of `source`; returns its op counts."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs every node it skips
    folder.mkdir(parents=True, exist_ok=True)
    pre = folder / "pre.onnx"
    quant_pre_process(str(source), str(pre), skip_symbolic_shape=False)
    quantize_dynamic(str(pre), str(folder / "model.onnx"), weight_type=QuantType.QInt8)
    ops = collections.Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)
    return dict(ops)


def accuracy(runtime, sequences: list[np.ndarray], targets: np.ndarray, batch: int = 64) -> float:
    correct = 0
    for i in range(0, len(sequences), batch):
        x, lengths = pad(sequences[i: i + batch])
        logits = dict(zip(runtime.output_names, runtime.session.run(None, feeds_for(runtime, x, lengths))))["logits"]
        correct += int((logits.argmax(axis=1) == targets[i: i + batch]).sum())
    return correct / len(sequences)


def measure(name: str, mode: Mode, folder: Path, sequences, targets) -> dict[str, Any]:
    fp32 = runtime_for(name)
    ops = quantize(fp32.version.model_file, folder)
    int8 = runtime_for(name, folder=folder)
    acc32, acc8 = accuracy(fp32, sequences, targets), accuracy(int8, sequences, targets)
    speed: dict[str, Any] = {}
    longest = max(sequences, key=len)
    for batch in (1, 64):
        group = [longest] if batch == 1 else sequences[:batch]
        x, lengths = pad(group)
        f32, f8 = feeds_for(fp32, x, lengths), feeds_for(int8, x, lengths)
        times = paired_times({"fp32": lambda: fp32.session.run(None, f32), "int8": lambda: int8.session.run(None, f8)},
                             mode.rounds, mode.min_time)
        speed[f"b{batch}"] = {"speedup": median_ratio(times["fp32"], times["int8"]),
                              "fp32_ms": 1e3 * float(np.median(times["fp32"])),
                              "int8_ms": 1e3 * float(np.median(times["int8"]))}
    recurrent_int8 = ops.get("DynamicQuantizeLSTM", 0)
    return {"fp32_accuracy": acc32, "int8_accuracy": acc8, "accuracy_drop": acc32 - acc8, "speed": speed,
            "int8_ops": ops, "recurrent_layers_quantized": recurrent_int8 > 0,
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
