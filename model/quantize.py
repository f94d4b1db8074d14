"""Dynamic int8 quantization of an exported model, judged by its accuracy on the test split.

`quantize_int8` runs onnxruntime's `quant_pre_process` (shape inference and graph clean-up, which
leaves LSTM's W and R as initializers) and then `quantize_dynamic`: weights stored as int8
(QInt8), activations quantized on every call from the range they have in that call. onnxruntime
turns LSTM nodes into `com.microsoft.DynamicQuantizeLSTM`; it has no int8 GRU or RNN kernel, so
those models get only the MatMuls around the recurrence (attention, head) quantized.

An int8 model is approximate by design, so no parity tolerance applies: `compare_on_test_split`
measures the float32 and the int8 model on a test split (JapaneseVowels', or the user's) through
onnxruntime.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from seqserve.contract import Architecture

from .data import SequenceDataset, load_split
from .errors import InputShapeError
from .evaluate import accuracy, fit_problem, predict
from .parity import make_session

SCHEME = "dynamic: int8 weights (QInt8), activations quantized per call"
INT8_SUFFIX = "_int8"  # an int8 variant of model `m` is published as model `m_int8`
QUANTIZED_RECURRENT_OPS = ("DynamicQuantizeLSTM",)


def int8_name(name: str) -> str:
    return f"{name}{INT8_SUFFIX}"


@contextmanager
def quiet_root_logger(level: int = logging.ERROR) -> Iterator[None]:
    """Raise the root logger's level for the block: the quantizer logs every node it skips."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(saved)


def quantize_int8(source: Path, target: Path) -> dict[str, int]:
    """Write `target`, the dynamically quantized int8 version of `source`; returns its op counts."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="seqserve-quantize-") as tmp, quiet_root_logger():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    return dict(Counter(node.op_type for node in onnx.load(str(target)).graph.node))


def recurrent_layers_quantized(ops: Mapping[str, int]) -> bool:
    """Whether the recurrence itself runs in int8 (only LSTM has an int8 kernel in onnxruntime)."""
    return any(ops.get(op, 0) for op in QUANTIZED_RECURRENT_OPS)


@dataclass(frozen=True)
class Int8Comparison:
    """A float32 model and its int8 version, run on the same labelled sequences."""

    sequences: int
    fp32_accuracy: float
    int8_accuracy: float
    max_abs_logits_difference: float  # max |int8 logits - fp32 logits| over every sequence and class

    @property
    def accuracy_drop(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy


def compare(
    fp32: ort.InferenceSession, int8: ort.InferenceSession, arch: Architecture,
    sequences: Sequence[np.ndarray], targets: np.ndarray,
) -> Int8Comparison:
    logits32 = predict(fp32, arch, sequences)  # (N, C)
    logits8 = predict(int8, arch, sequences)  # (N, C)
    return Int8Comparison(
        sequences=len(sequences),
        fp32_accuracy=accuracy(logits32, targets),
        int8_accuracy=accuracy(logits8, targets),
        max_abs_logits_difference=float(np.abs(logits8 - logits32).max()),
    )


def compare_on_test_split(
    fp32_file: Path, int8_file: Path, arch: Architecture, class_labels: Sequence[str],
    data: SequenceDataset | None = None,
) -> Int8Comparison:
    """Both models on a labelled test set (default: the JapaneseVowels test split); raises InputShapeError
    for a model made for other data."""
    data = data or load_split("test")
    if arch.regression:
        raise InputShapeError("int8: only classifiers have an int8 variant (judged on test accuracy); "
                              f"this model does {arch.task}")
    problem = fit_problem(arch, class_labels, data)
    if problem:
        raise InputShapeError(f"int8: accuracy is measured on the {data.name} test split, which cannot score this "
                              f"model: {problem}")
    return compare(make_session(fp32_file), make_session(int8_file), arch, data.sequences, data.targets)
