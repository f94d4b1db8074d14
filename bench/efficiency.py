"""Figure 2: the FLOP rate onnxruntime's recurrent kernels reach at batch 64, vs a float32 GEMM.

What is timed: the model's recurrent nodes alone (every LSTM/GRU/RNN node of the exported graph,
with its real weights and attributes, fed (T, B, I) inputs and `sequence_lens`, one graph, no
other op), in a session with the server's options. The ceiling: an onnxruntime MatMul of two
N x N float32 matrices in a session with the same options, and numpy's sgemm (OpenBLAS, threads
= physical cores) of the same size; the higher of the two per round. Model and GEMM are timed
alternately, round by round; the figure is the median of the per-round ratios.

FLOPs counted (2 FLOPs per multiply-add; bias adds, activations and the element-wise gate
arithmetic are left out, which under-counts by < 3% at these sizes), per time step, per
direction, per sequence, for a layer with input width I and hidden size H:

    LSTM  2 * 4H * (I + H)      (4 gates: W x_t and R h_{t-1})
    GRU   2 * 3H * (I + H)      (3 gates; linear_before_reset does not change the count)
    RNN   2 *  H * (I + H)

summed over layers (I = features for layer 1, directions * H above) and directions, times B * T.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.common import REPOSITORY, THREADS, Mode, at_least, figure, median_ratio, paired_times, quiet_stderr
from seqserve.inference import open_session

GOAL = 0.75
BATCH, TIME = 64, 100
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SYNTHETIC_INPUT = 64  # features of the synthetic hidden >= 128 models


def recurrent_only(model_path: Path) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """A graph of just the model's recurrent nodes: input X_i (T, B, I_i) each, shared seq_lens (B,)."""
    source = onnx.load(str(model_path))
    inits = {i.name: i for i in source.graph.initializer}
    nodes, inputs, outputs, initializers, layers = [], [], [], [], []
    seq_lens = helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["B"])
    for i, node in enumerate(n for n in source.graph.node if n.op_type in GATES):
        w, r, b = (numpy_helper.to_array(inits[name]) for name in node.input[1:4])
        directions, gates_h, width = w.shape
        hidden = gates_h // GATES[node.op_type]
        x_name = f"X{i}"
        inputs.append(helper.make_tensor_value_info(x_name, TensorProto.FLOAT, ["T", "B", width]))
        for tag, value in (("W", w), ("R", r), ("B", b)):
            initializers.append(numpy_helper.from_array(value, f"{tag}{i}"))
        y_name = f"Y{i}"
        outputs.append(helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None))
        new = helper.make_node(node.op_type, [x_name, f"W{i}", f"R{i}", f"B{i}", "seq_lens"], [y_name],
                               name=f"{node.op_type}_{i}")
        new.attribute.extend(node.attribute)
        nodes.append(new)
        layers.append({"op": node.op_type, "input": int(width), "hidden": int(hidden), "directions": int(directions)})
    graph = helper.make_graph(nodes, "recurrent_only", inputs + [seq_lens], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = source.ir_version
    return model, layers


def recurrent_flops(layers: list[dict[str, Any]], batch: int, steps: int) -> float:
    per_step = sum(2 * GATES[layer["op"]] * layer["hidden"] * (layer["input"] + layer["hidden"]) * layer["directions"]
                   for layer in layers)
    return float(per_step * batch * steps)


def gemm_callables(n: int) -> dict[str, Any]:
    """onnxruntime MatMul and numpy sgemm of n x n float32 matrices."""
    a_info = helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])
    b_info = helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])
    c_info = helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm", [a_info, b_info], [c_info])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = open_session(model.SerializeToString(), THREADS)  # the server's session options
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    return {
        "ort_gemm": lambda: session.run(None, {"A": a, "B": b}),
        "numpy_gemm": lambda: np.matmul(a, b, out=out),
    }


def measure(model_path: Path, mode: Mode, gemm: dict[str, Any], gemm_flops: float) -> dict[str, Any]:
    model, layers = recurrent_only(model_path)
    session = open_session(model.SerializeToString(), THREADS)  # the server's session options
    rng = np.random.default_rng(1)
    feeds: dict[str, np.ndarray] = {"seq_lens": np.full(BATCH, TIME, dtype=np.int32)}
    for i, layer in enumerate(layers):
        feeds[f"X{i}"] = rng.standard_normal((TIME, BATCH, layer["input"]), dtype=np.float32)
    flops = recurrent_flops(layers, BATCH, TIME)
    times = paired_times({"recurrent": lambda: session.run(None, feeds), **gemm}, mode.rounds, mode.min_time)
    ceiling_times = [min(a, b) for a, b in zip(times["ort_gemm"], times["numpy_gemm"], strict=True)]
    # ratio of FLOP rates = (flops / t_rec) / (gemm_flops / t_gemm)
    ratio = median_ratio([flops * t for t in ceiling_times], [gemm_flops * t for t in times["recurrent"]])
    return {
        "value": ratio, "layers": layers, "batch": BATCH, "time": TIME, "flops_per_run": flops,
        "recurrent_gflops": flops / float(np.median(times["recurrent"])) / 1e9,
        "ort_gemm_gflops": gemm_flops / float(np.median(times["ort_gemm"])) / 1e9,
        "numpy_gemm_gflops": gemm_flops / float(np.median(times["numpy_gemm"])) / 1e9,
    }


def synthetic_model(folder: Path, cell: str, hidden: int) -> Path:
    """A 2-layer bidirectional encoder of `hidden` units, exported by the project's exporter."""
    import torch

    from seqserve.model.config import EncoderConfig
    from seqserve.model.encoder import RecurrentEncoder
    from seqserve.model.onnx_export import export_onnx

    torch.manual_seed(0)
    config = EncoderConfig(cell=cell, input_size=SYNTHETIC_INPUT, hidden_size=hidden, num_layers=2,
                           bidirectional=True, attention="additive", num_classes=9)
    path = folder / f"{cell}_h{hidden}.onnx"
    with quiet_stderr():
        export_onnx(RecurrentEncoder(config).eval(), path)
    return path


def run(mode: Mode, models: list[str]) -> dict[str, dict]:
    n = 1024 if mode.name != "full" else 2048
    gemm = gemm_callables(n)
    gemm_flops = 2.0 * n**3
    figures = {}
    common = {"gemm_size": n, "threads": THREADS, "formula": "LSTM 8H(I+H), GRU 6H(I+H), RNN 2H(I+H) FLOPs "
              "per step, direction and sequence; ceiling = max(onnxruntime MatMul, numpy sgemm) per round"}
    with tempfile.TemporaryDirectory(prefix="bench-eff-") as tmp:
        for cell in mode.efficiency_cells:
            for hidden in mode.efficiency_hidden:
                result = measure(synthetic_model(Path(tmp), cell, hidden), mode, gemm, gemm_flops)
                goal, met = at_least(result["value"], GOAL)
                figures[f"efficiency.{cell}_h{hidden}"] = figure(
                    result.pop("value"), goal, met, "recurrent FLOP rate / GEMM FLOP rate",
                    synthetic=True, **result, **common)
    for name in models:
        from seqserve.repository import latest_version

        path = latest_version(REPOSITORY, name).model_file
        result = measure(path, mode, gemm, gemm_flops)
        figures[f"efficiency.{name}"] = figure(result.pop("value"), None, None,
                                               "recurrent FLOP rate / GEMM FLOP rate (no goal: hidden 64)",
                                               synthetic=False, **result, **common)
    return figures
