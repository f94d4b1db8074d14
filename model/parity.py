"""Numerical parity of an exported model: onnxruntime vs the eager PyTorch module.

Every case of a grid (batch 1..32; lengths 1, mid, far longer than any training sequence,
unsorted mixes; for streaming models a random initial state and a row with no steps) runs
through onnxruntime, the float32 module and a float64 copy of it, and the float64 copy again on
`x` moved by one float32 rounding step in a few random directions. An element passes when it is within

    max(ATOL + RTOL * |reference|, CONDITIONING_SLACK * rounding effect)

of both references: float64 PyTorch, the exact answer of the same weights (so the difference is
onnxruntime's own error), and float32 PyTorch, what training and evaluation computed. The rounding
effect is how far such a rounding step of the input moved the exact answer of that output in that
case (the largest of the draws): on long random sequences a trained recurrence can amplify it past 1e-5, and there no float32
implementation is owed a smaller error than a few times that. Elsewhere it is far below ATOL and the
rule is numpy's `allclose`.

The report's headline error is `max |ort - torch64|`; beside it `max |ort - torch32|`, float32
PyTorch's own error, the rounding effect, and the largest share of its allowance any element used
(at most 1 to pass).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model.encoder import RecurrentEncoder
from model.errors import ParityError
from seqserve.contract import input_names, output_names

ATOL = 1e-5
RTOL = 1e-4
FLOAT32_ROUNDING = 2.0**-24  # relative size of one float32 rounding step
CONDITIONING_SLACK = 10.0  # allowance, in units of the answer's change under one rounding of x
ROUNDING_DRAWS = 3  # random roundings of x per case; the effect is the largest change among them


@dataclass(frozen=True)
class ParityCase:
    name: str
    lengths: tuple[int, ...]
    random_state: bool = False  # streaming models: start from a random (h0, c0)


def tolerance_used(actual: np.ndarray, reference: np.ndarray, rounding_effect: float) -> np.ndarray:
    """|actual - reference| over the allowed error, per element: above 1 fails."""
    allowed = np.maximum(ATOL + RTOL * np.abs(reference), CONDITIONING_SLACK * rounding_effect)
    return np.abs(actual - reference) / allowed


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0


@dataclass
class OutputError:
    max_abs: float = 0.0  # max |ort - torch64|: onnxruntime's error against the exact answer
    max_abs_vs_torch32: float = 0.0  # max |ort - torch32|: agreement with the eager float32 module
    torch32_vs_fp64: float = 0.0  # max |torch32 - torch64|: float32 PyTorch's own error, for scale
    input_rounding_effect: float = 0.0  # max change of torch64 when x moves by one float32 rounding step
    max_tolerance_used: float = 0.0  # max |ort - ref| / allowed error over both references; <= 1 passes
    failures: int = 0  # elements beyond tolerance of either reference

    def update(self, ort_out: np.ndarray, t32: np.ndarray, t64: np.ndarray, t64_rounded: list[np.ndarray]) -> None:
        """Fold in one case; `t64_rounded` holds torch64 on inputs moved by one float32 rounding step."""
        if not ort_out.size:
            return
        ort64 = ort_out.astype(np.float64)
        rounding_effect = max(max_abs(rounded, t64) for rounded in t64_rounded)
        used64, used32 = tolerance_used(ort64, t64, rounding_effect), tolerance_used(ort64, t32, rounding_effect)
        self.max_abs = max(self.max_abs, max_abs(ort64, t64))
        self.max_abs_vs_torch32 = max(self.max_abs_vs_torch32, max_abs(ort64, t32))
        self.torch32_vs_fp64 = max(self.torch32_vs_fp64, max_abs(t32, t64))
        self.input_rounding_effect = max(self.input_rounding_effect, rounding_effect)
        self.max_tolerance_used = max(self.max_tolerance_used, float(used64.max()), float(used32.max()))
        self.failures += int((used64 > 1.0).sum() + (used32 > 1.0).sum())


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
            "max_abs_error": self.max_abs_error,
            **{f: self.worst(f) for f in ("max_abs_vs_torch32", "input_rounding_effect", "max_tolerance_used")},
            "cases": self.cases,
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
        }

    def summary(self) -> str:
        rows = [f"{'output':<12} {'vs fp64':>10} {'vs fp32':>10} {'fp32 own':>10} {'x rounding':>10} "
                f"{'tol used':>9} {'fails':>6}"]
        for name, e in self.outputs.items():
            rows.append(f"{name:<12} {e.max_abs:>10.2e} {e.max_abs_vs_torch32:>10.2e} {e.torch32_vs_fp64:>10.2e} "
                        f"{e.input_rounding_effect:>10.2e} {e.max_tolerance_used:>9.2f} {e.failures:>6}")
        return "\n".join(rows)


def parity_grid(streaming: bool, long_length: int = 500) -> list[ParityCase]:
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
    inputs = {"x": x, "lengths": np.array(case.lengths, dtype=np.int64)}
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
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(model: RecurrentEncoder, onnx_path: str | Path, long_length: int = 500) -> ParityReport:
    """Run the grid through onnxruntime and PyTorch (float32 and float64); never raises on mismatch."""
    model = model.eval()
    model64 = copy.deepcopy(model).double()
    session = make_session(onnx_path)
    names = output_names(model.config.architecture)
    report = ParityReport(outputs={n: OutputError() for n in names})
    rng, rounding_rng = np.random.default_rng(1234), np.random.default_rng(5678)
    for case in parity_grid(model.config.streaming, long_length):
        inputs = case_inputs(model, case, rng)
        ort_out = dict(zip(names, session.run(names, inputs)))
        t32, t64 = run_torch(model, inputs, torch.float32), run_torch(model64, inputs, torch.float64)
        t64_rounded = [run_torch(model64, rounding_perturbed(inputs, rounding_rng), torch.float64)
                       for _ in range(ROUNDING_DRAWS)]
        for name in names:
            if ort_out[name].shape != t32[name].shape:
                raise ParityError(f"{name}: onnxruntime shape {ort_out[name].shape} != torch {t32[name].shape} "
                                  f"in case {case.name}")
            report.outputs[name].update(ort_out[name], t32[name], t64[name], [r[name] for r in t64_rounded])
        report.cases.append(case.name)
    return report
