"""Numerical parity of an exported model: onnxruntime vs the eager PyTorch module and a numpy reference.

Every case of a grid (batch 1..32; lengths 1, mid, far longer than any training sequence,
unsorted mixes; for streaming models a random initial state and a row with no steps; with a strided
input stage lengths around multiples of the stride) runs
through onnxruntime, the float32 module, a float64 copy of it and `model.reference` (the cell
equations in float64 numpy, written apart from PyTorch), and the float64 copy again on `x` moved by
one float32 rounding step in a few random directions. An element passes when it is within

    max(ATOL + RTOL * |reference|, min(CONDITIONING_SLACK * rounding effect of its row, ROUNDING_ALLOWANCE_CAP))

of all three witnesses: float64 PyTorch, the exact answer of the same weights (so the difference is
onnxruntime's own error), the numpy reference, the same exact answer computed without PyTorch, and
float32 PyTorch, what training and evaluation computed. The rounding effect of a row (one sequence of
the batch) is how far such a rounding step of the input moved the exact answer of that output on that
row (the largest of the draws): on long random sequences a trained recurrence can amplify it past
1e-5, and there no float32 implementation is owed a smaller error than a few times that. Rows are
independent, so a long ill-conditioned row widens no other row's tolerance; elsewhere the effect is far
below ATOL and the rule is numpy's `allclose`.

The report's headline error is `max |ort - torch64|`; beside it `max |ort - reference|`,
`max |ort - torch32|`, float32 PyTorch's own error, how far the two exact answers (torch64 and the
reference) differ, the rounding effect, and the largest share of its allowance any element used
(at most 1 to pass).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from seqserve.contract import BATCH, input_names, output_specs
from seqserve.inference import open_session

from .encoder import RecurrentEncoder
from .errors import ParityError
from .reference import ReferenceEncoder

ATOL = 1e-5
RTOL = 1e-4
FLOAT32_ROUNDING = 2.0**-24  # relative size of one float32 rounding step
CONDITIONING_SLACK = 10.0  # allowance, in units of the answer's change under one rounding of x
ROUNDING_DRAWS = 3  # random roundings of x per case; the effect is the largest change among them
ROUNDING_ALLOWANCE_CAP = 1e-3  # 100 x ATOL: the rounding allowance never exceeds this, however ill-conditioned
# a row. The largest onnxruntime error measured on a normally trained model is 3.9e-4 (bi-LSTM sweep run, seed 7,
# on a 500-step random row where float32 PyTorch is itself 1.6e-4 off the exact answer and one rounding of x moves
# it 1.5e-4); the cap covers that 2.5x, and the worst six sweep runs pass under it (1e-4 would refuse three of
# them). Past 1e-3 on outputs of order 1 the allowance would no longer bound an error, it would excuse any: a
# row that ill-conditioned fails instead of letting its own amplification widen the tolerance without limit.


@dataclass(frozen=True)
class ParityCase:
    name: str
    lengths: tuple[int, ...]
    random_state: bool = False  # streaming models: start from a random (h0, c0)


def rounding_effect_per_row(exact: np.ndarray, rounded: list[np.ndarray], batch_axis: int) -> np.ndarray:
    """How far the rounding draws moved the exact answer, per sequence: the max over draws and the row's elements.

    `exact` and each of `rounded` have one output's shape, its batch dimension at `batch_axis`; returns (B,).
    """
    moved = np.max([np.abs(r - exact) for r in rounded], axis=0)  # exact's shape
    return moved.max(axis=tuple(i for i in range(moved.ndim) if i != batch_axis))  # (B,)


def rounding_allowance(effect_per_row: np.ndarray, batch_axis: int, ndim: int) -> np.ndarray:
    """The capped allowance of each row, shaped to broadcast against an output of `ndim` dimensions."""
    allowance = np.minimum(CONDITIONING_SLACK * effect_per_row, ROUNDING_ALLOWANCE_CAP)  # (B,)
    return allowance.reshape([-1 if i == batch_axis else 1 for i in range(ndim)])


def tolerance_used(actual: np.ndarray, reference: np.ndarray, allowance: np.ndarray | float) -> np.ndarray:
    """|actual - reference| over the allowed error, per element: above 1 fails. `allowance` broadcasts."""
    allowed = np.maximum(ATOL + RTOL * np.abs(reference), allowance)
    return np.abs(actual - reference) / allowed


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0


@dataclass(frozen=True)
class Witnesses:
    """What onnxruntime's answer for one output in one case is judged against, each in float64."""

    torch32: np.ndarray  # the eager float32 module
    torch64: np.ndarray  # a float64 copy of it: the exact answer of the same weights
    reference: np.ndarray  # model.reference: the exact answer again, from the equations in numpy
    torch64_rounded: list[np.ndarray]  # torch64 on x moved by one float32 rounding step, one per draw
    batch_axis: int = 0  # where the output's batch dimension is (1 for h_n and c_n)


@dataclass
class OutputError:
    max_abs: float = 0.0  # max |ort - torch64|: onnxruntime's error against the exact answer
    max_abs_vs_reference: float = 0.0  # max |ort - reference|: the same, against the numpy reference
    max_abs_vs_torch32: float = 0.0  # max |ort - torch32|: agreement with the eager float32 module
    torch32_vs_fp64: float = 0.0  # max |torch32 - torch64|: float32 PyTorch's own error, for scale
    reference_vs_torch64: float = 0.0  # max |reference - torch64|: how far the two exact answers differ
    input_rounding_effect: float = 0.0  # max change of torch64 when x moves by one float32 rounding step
    max_tolerance_used: float = 0.0  # max |ort - witness| / allowed error over the three witnesses; <= 1 passes
    failures: int = 0  # elements beyond tolerance of any witness

    def update(self, ort_out: np.ndarray, w: Witnesses) -> None:
        """Fold in one case."""
        if not ort_out.size:
            return
        ort64 = ort_out.astype(np.float64)
        effect = rounding_effect_per_row(w.torch64, w.torch64_rounded, w.batch_axis)  # (B,)
        allowance = rounding_allowance(effect, w.batch_axis, ort64.ndim)
        used = np.max([tolerance_used(ort64, ref, allowance) for ref in (w.torch64, w.reference, w.torch32)], axis=0)
        self.max_abs = max(self.max_abs, max_abs(ort64, w.torch64))
        self.max_abs_vs_reference = max(self.max_abs_vs_reference, max_abs(ort64, w.reference))
        self.max_abs_vs_torch32 = max(self.max_abs_vs_torch32, max_abs(ort64, w.torch32))
        self.torch32_vs_fp64 = max(self.torch32_vs_fp64, max_abs(w.torch32, w.torch64))
        self.reference_vs_torch64 = max(self.reference_vs_torch64, max_abs(w.reference, w.torch64))
        self.input_rounding_effect = max(self.input_rounding_effect, float(effect.max()))
        self.max_tolerance_used = max(self.max_tolerance_used, float(used.max()))
        self.failures += int((used > 1.0).sum())


@dataclass
class ParityReport:
    atol: float = ATOL
    rtol: float = RTOL
    cases: list[str] = field(default_factory=list)
    outputs: dict[str, OutputError] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(e.failures == 0 for e in self.outputs.values())

    def worst(self, figure: str) -> float:
        """The largest value of an `OutputError` figure over every output (and so every case)."""
        return max(getattr(e, figure) for e in self.outputs.values())

    @property
    def max_abs_error(self) -> float:
        """The largest |ort - torch64|."""
        return self.worst("max_abs")

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "conditioning_slack": CONDITIONING_SLACK,
            "rounding_draws": ROUNDING_DRAWS,
            "rounding_allowance_cap": ROUNDING_ALLOWANCE_CAP,
            "max_abs_error": self.max_abs_error,
            **{f: self.worst(f) for f in ("max_abs_vs_reference", "max_abs_vs_torch32", "reference_vs_torch64",
                                          "input_rounding_effect", "max_tolerance_used")},
            "cases": self.cases,
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
        }

    def summary(self) -> str:
        rows = [f"{'output':<12} {'vs fp64':>10} {'vs ref':>10} {'vs fp32':>10} {'fp32 own':>10} "
                f"{'x rounding':>10} {'tol used':>9} {'fails':>6}"]
        for name, e in self.outputs.items():
            rows.append(f"{name:<12} {e.max_abs:>10.2e} {e.max_abs_vs_reference:>10.2e} {e.max_abs_vs_torch32:>10.2e} "
                        f"{e.torch32_vs_fp64:>10.2e} {e.input_rounding_effect:>10.2e} {e.max_tolerance_used:>9.2f} "
                        f"{e.failures:>6}")
        return "\n".join(rows)


def parity_grid(streaming: bool, long_length: int = 500, stride: int = 1) -> list[ParityCase]:
    """The cases; with a strided input stage (`stride` > 1) also unsorted lengths just below, at and above
    multiples of the stride."""
    rng = np.random.default_rng(0)
    cases = [
        ParityCase("b1_len1", (1,)),
        ParityCase("b1_len15", (15,)),
        ParityCase(f"b1_len{long_length}", (long_length,)),
        ParityCase("b2_sorted", (29, 7)),
        ParityCase("b8_unsorted", tuple(int(v) for v in rng.permutation([1, 3, 7, 12, 15, 20, 26, 29]))),
        ParityCase("b16_mid", (15,) * 16),
        ParityCase("b32_mixed", tuple(int(v) for v in rng.integers(1, 60, size=32))),
        ParityCase("b4_long_mixed", (long_length, 3, long_length // 2, 1)),
    ]
    if stride > 1:
        edges = [n for k in (1, 2, 5) for n in (k * stride - 1, k * stride, k * stride + 1) if n >= 1]
        cases.append(ParityCase("stride_edges", tuple(int(v) for v in rng.permutation(edges))))
    if streaming:
        cases += [
            ParityCase("b5_random_state", (9, 1, 17, 4, 30), random_state=True),
            ParityCase("b3_empty_row", (6, 0, 11), random_state=True),
        ]
    return cases


def case_inputs(model: RecurrentEncoder, case: ParityCase, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Raw-scale features drawn around the model's normalisation statistics."""
    cfg = model.config
    B, T, F = len(case.lengths), max(max(case.lengths), 1), cfg.input_size
    mean = model.feature_mean.numpy()
    std = 1.0 / model.feature_inv_std.numpy()
    x = (mean + std * rng.standard_normal((B, T, F))).astype(np.float32)  # (B, T, F)
    inputs: dict[str, np.ndarray] = {"x": x, "lengths": np.array(case.lengths, dtype=np.int64)}
    if cfg.streaming:
        state_shape = (cfg.num_layers, B, cfg.hidden_size)
        scale = 0.5 if case.random_state else 0.0
        inputs["h0"] = (scale * rng.standard_normal(state_shape)).astype(np.float32)
        if cfg.cell == "lstm":
            inputs["c0"] = (scale * rng.standard_normal(state_shape)).astype(np.float32)
    return inputs


def rounding_perturbed(inputs: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The inputs in float64 with x moved by about one float32 rounding step per element."""
    x = inputs["x"].astype(np.float64)  # (B, T, F)
    return inputs | {"x": x * (1.0 + FLOAT32_ROUNDING * rng.standard_normal(x.shape))}


def run_torch(model: RecurrentEncoder, inputs: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, np.ndarray]:
    names = input_names(model.config.architecture)
    args = [torch.from_numpy(inputs[n]) for n in names]
    args = [a.to(dtype) if a.is_floating_point() else a for a in args]
    with torch.no_grad():
        out = model(*args).as_dict()
    return {k: v.double().numpy() for k, v in out.items()}


def make_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """The session the server would run, on `threads` threads (the inference core's options)."""
    return open_session(path, threads)


def check_parity(model: RecurrentEncoder, onnx_path: str | Path, long_length: int = 500) -> ParityReport:
    """Run the grid through onnxruntime, PyTorch (float32 and float64) and the numpy reference;
    never raises on mismatch."""
    model = model.eval()
    model64 = copy.deepcopy(model).double()
    reference = ReferenceEncoder.from_encoder(model)
    session = make_session(onnx_path)
    specs = output_specs(model.config.architecture)
    names = [s.name for s in specs]
    report = ParityReport(outputs={n: OutputError() for n in names})
    rng, rounding_rng = np.random.default_rng(1234), np.random.default_rng(5678)
    stride = model.config.architecture.conv_stride
    for case in parity_grid(model.config.streaming, long_length, stride):
        inputs = case_inputs(model, case, rng)
        ort_out = dict(zip(names, session.run(names, inputs), strict=True))
        t32, t64 = run_torch(model, inputs, torch.float32), run_torch(model64, inputs, torch.float64)
        ref = reference(**inputs)
        t64_rounded = [run_torch(model64, rounding_perturbed(inputs, rounding_rng), torch.float64)
                       for _ in range(ROUNDING_DRAWS)]
        for spec in specs:
            name = spec.name
            for source, value in (("onnxruntime", ort_out[name]), ("reference", ref[name])):
                if value.shape != t32[name].shape:
                    raise ParityError(f"{name}: {source} shape {value.shape} != torch {t32[name].shape} "
                                      f"in case {case.name}")
            witnesses = Witnesses(t32[name], t64[name], ref[name], [r[name] for r in t64_rounded],
                                  spec.shape.index(BATCH))
            report.outputs[name].update(ort_out[name], witnesses)
        report.cases.append(case.name)
    return report
