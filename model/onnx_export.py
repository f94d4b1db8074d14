"""RecurrentEncoder -> ONNX with native RNN/LSTM/GRU nodes, and the checks that make it publishable.

Uses the TorchScript exporter (`dynamo=False`): it maps nn.LSTM/GRU/RNN to native ONNX nodes,
turns pack_padded_sequence into the nodes' `sequence_lens` input and keeps batch and time
symbolic (see shared/notes/onnx-export.md for why the dynamo exporter does not fit).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from seqserve.contract import dynamic_axes, input_names, input_specs, output_names, output_specs

from .encoder import RecurrentEncoder
from .errors import ParityError

OPSET = 17
RNN_OPS = ("RNN", "LSTM", "GRU")


class _ContractOutputs(nn.Module):
    """Returns the encoder's outputs as a tuple in contract order (what the exporter needs)."""

    def __init__(self, encoder: RecurrentEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.names = output_names(encoder.config.architecture)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = self.encoder(*inputs).as_dict()
        return tuple(out[name] for name in self.names)


def example_inputs(model: RecurrentEncoder, batch: int = 2, time: int = 5) -> tuple[Tensor, ...]:
    x = torch.randn(batch, time, model.config.input_size)  # (B, T, F)
    lengths = torch.tensor([time] + [max(1, time - 2)] * (batch - 1))  # (B,), unequal on purpose
    inputs: list[Tensor] = [x, lengths]
    if model.config.streaming:
        h0, c0 = model.initial_state(batch)  # (L, B, H) each
        inputs += [h0] + ([c0] if c0 is not None else [])
    return tuple(inputs)


def export_onnx(model: RecurrentEncoder, path: str | Path) -> None:
    """Write `model` as ONNX to `path` with the contract's names and symbolic batch/time."""
    arch = model.config.architecture
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
        torch.onnx.export(
            _ContractOutputs(model).eval(),
            example_inputs(model),
            str(path),
            input_names=input_names(arch),
            output_names=output_names(arch),
            dynamic_axes=dynamic_axes(arch),
            opset_version=OPSET,
            dynamo=False,
        )


def graph_problems(path: str | Path, model: RecurrentEncoder) -> list[str]:
    """Structural checks on the exported graph; an empty list means it is sound.

    - one native recurrent node per layer, whatever the sequence length (no unrolled loop);
    - every recurrent node fed `sequence_lens`;
    - GRU nodes with linear_before_reset=1 (PyTorch's formulation);
    - one Conv node with a conv input stage, none without;
    - every declared input/output shape equals the contract, batch and time symbolic.
    """
    cfg = model.config
    graph = onnx.load(str(path)).graph
    problems = []
    rnn_nodes = [n for n in graph.node if n.op_type in RNN_OPS]
    expected_op = cfg.cell.upper()
    if len(rnn_nodes) != cfg.num_layers or any(n.op_type != expected_op for n in rnn_nodes):
        problems.append(
            f"expected {cfg.num_layers} {expected_op} node(s), found {[n.op_type for n in rnn_nodes]}"
        )
    for node in rnn_nodes:
        if len(node.input) < 5 or not node.input[4]:
            problems.append(f"{node.name}: sequence_lens is not wired")
        if node.op_type == "GRU":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("linear_before_reset") != 1:
                problems.append(f"{node.name}: linear_before_reset must be 1")
    if any(n.op_type in ("Loop", "Scan") for n in graph.node):
        problems.append("graph contains a Loop/Scan: the recurrence was unrolled")
    convs = sum(n.op_type == "Conv" for n in graph.node)
    if convs != (cfg.input_stage == "conv"):
        problems.append(f"expected {int(cfg.input_stage == 'conv')} Conv node(s) (input_stage {cfg.input_stage}), "
                        f"found {convs}")

    declared = {v.name: v for v in list(graph.input) + list(graph.output)}
    for spec in input_specs(cfg.architecture) + output_specs(cfg.architecture):
        value = declared.get(spec.name)
        if value is None:
            problems.append(f"{spec.name}: missing from the graph's inputs/outputs")
            continue
        dims = tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)
        if dims != spec.shape:
            problems.append(f"{spec.name}: declared shape {dims}, contract says {spec.shape}")
    return problems


def check_graph(path: str | Path, model: RecurrentEncoder) -> None:
    problems = graph_problems(path, model)
    if problems:
        raise ParityError("exported graph breaks the contract:\n  " + "\n  ".join(problems))
