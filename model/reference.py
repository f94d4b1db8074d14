"""An independent numpy reference of `RecurrentEncoder`: the cell equations in the fused [W_aa | W_ax] form.

Written from the equations (docs/recurrent-cells.md), not from PyTorch or onnxruntime code: plain numpy
in float64, one matrix product per step per direction, reading nothing from a trained model but its
state dict. The export's parity report uses it as a third witness beside float32 and float64 PyTorch.

Notation: a⟨t⟩ the hidden state (H), x⟨t⟩ the input step (F), σ the logistic function, ⊙ elementwise.
PyTorch stacks each cell's gates as rows: `weight_hh_l{k}` is W_aa (G·H, H), `weight_ih_l{k}` is
W_ax (G·H, F), with G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n); `_reverse` is the backward
direction. Fused, W = [W_aa | W_ax] (G·H, H + F) multiplies the stacked [a⟨t−1⟩; x⟨t⟩] (H + F):

    RNN   a⟨t⟩ = tanh(W [a⟨t−1⟩; x⟨t⟩] + b)
    LSTM  [i; f; g; o] = W [a⟨t−1⟩; x⟨t⟩] + b
          c⟨t⟩ = σ(f) ⊙ c⟨t−1⟩ + σ(i) ⊙ tanh(g),   a⟨t⟩ = σ(o) ⊙ tanh(c⟨t⟩)
    GRU   r = σ(W_r [a⟨t−1⟩; x⟨t⟩] + b_r),   z = σ(W_z [a⟨t−1⟩; x⟨t⟩] + b_z)
          n = tanh(W_xn x⟨t⟩ + b_xn + r ⊙ (W_an a⟨t−1⟩ + b_an))
          a⟨t⟩ = (1 − z) ⊙ n + z ⊙ a⟨t−1⟩

The GRU's reset gate multiplies W_an a + b_an, after the product (PyTorch's formulation, ONNX
`linear_before_reset=1`), so its n gate needs the a and x parts apart: its fused matrix has 4H rows,
[W_ar | W_xr], [W_az | W_xz], [W_an | 0], [0 | W_xn] — still one product per step. Each bias is
b_ih + b_hh, except the GRU's n gate, whose two halves stay on their own rows.

An input stage (config input_stage="conv") comes first: a 1-D convolution over time, kernel k, stride s,
C filters W_c (C, F, k) and bias b_c, then ReLU. The steps are zero-padded by k − 1, ⌊(k − 1)/2⌋ before
and the rest after, with every step past a row's length zero as well, so frame j of a row is

    u⟨j⟩ = max(0, b_c + Σ_τ W_c[:, :, τ] x̃⟨j·s − ⌊(k − 1)/2⌋ + τ⟩),   j < ⌈length / s⌉

(x̃ the normalised steps, 0 outside the row) and the recurrent layers read u with lengths ⌈length / s⌉.
A regressor's head gives standardised predictions z; the output is z ⊙ target_std + target_mean.

Batches are padded (B, T, F) with real lengths (B,): a row updates only on its steps t < length, so
the forward direction stops at the row's own last step and the backward direction starts there. A
layer above the first reads the layer below's outputs, both directions concatenated (B, T, D·H).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import EncoderConfig

if TYPE_CHECKING:
    from .encoder import RecurrentEncoder

Array = np.ndarray
CellStep = Callable[[Array, Array, Array | None], tuple[Array, Array | None]]
FUSED_ROWS = {"rnn": 1, "lstm": 4, "gru": 4}  # rows of the fused matrix per hidden unit (GRU: r, z, n_a, n_x)


def sigmoid(v: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # σ(v) without overflow for large |v|


@dataclass(frozen=True)
class FusedDirection:
    """One direction of one layer: the pre-activations are W [a⟨t−1⟩; x⟨t⟩] + b."""

    W: Array  # (G·H, H + F) = [W_aa | W_ax]
    b: Array  # (G·H,)
    hidden_size: int  # H

    @property
    def W_aa(self) -> Array:
        return self.W[:, : self.hidden_size]  # (G·H, H)

    @property
    def W_ax(self) -> Array:
        return self.W[:, self.hidden_size :]  # (G·H, F)


def fuse(cell: str, w_ih: Array, w_hh: Array, b_ih: Array, b_hh: Array) -> FusedDirection:
    """PyTorch's weight_ih (G·H, F), weight_hh (G·H, H), bias_ih and bias_hh (G·H,) as one [W_aa | W_ax]."""
    H, F = w_hh.shape[1], w_ih.shape[1]
    if cell != "gru":
        return FusedDirection(np.concatenate([w_hh, w_ih], axis=1), b_ih + b_hh, H)  # (G·H, H+F), (G·H,)
    rz = np.concatenate([w_hh[: 2 * H], w_ih[: 2 * H]], axis=1)  # (2H, H+F): r and z read [a; x] together
    n_a = np.concatenate([w_hh[2 * H :], np.zeros((H, F))], axis=1)  # (H, H+F): W_an a alone
    n_x = np.concatenate([np.zeros((H, H)), w_ih[2 * H :]], axis=1)  # (H, H+F): W_xn x alone
    b = np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_hh[2 * H :], b_ih[2 * H :]])  # (4H,): b_r, b_z, b_an, b_xn
    return FusedDirection(np.concatenate([rz, n_a, n_x]), b, H)  # (4H, H+F), (4H,)


def rnn_step(pre: Array, a: Array, c: Array | None) -> tuple[Array, None]:
    return np.tanh(pre), None  # (B, H)


def lstm_step(pre: Array, a: Array, c: Array | None) -> tuple[Array, Array]:
    i, f, g, o = np.split(pre, 4, axis=1)  # (B, H) each: input, forget, candidate, output
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)  # (B, H): keep part of the old cell, write part of the new
    return sigmoid(o) * np.tanh(c), c  # (B, H), (B, H)


def gru_step(pre: Array, a: Array, c: Array | None) -> tuple[Array, None]:
    r_pre, z_pre, n_a, n_x = np.split(pre, 4, axis=1)  # (B, H) each
    r, z = sigmoid(r_pre), sigmoid(z_pre)  # (B, H) each: reset, update
    n = np.tanh(n_x + r * n_a)  # (B, H): the reset gate scales W_an a + b_an
    return (1.0 - z) * n + z * a, None  # (B, H)


CELL_STEPS: dict[str, CellStep] = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step}


def run_direction(
    cell: str, weights: FusedDirection, x: Array, lengths: Array, a0: Array, c0: Array | None, reverse: bool,
) -> tuple[Array, Array, Array | None]:
    """One direction over a padded batch: outputs (B, T, H), 0 on padding, and the final a, c (B, H).

    A row updates only on its real steps: steps past its end leave its state as it was, so a
    backward direction starts from the initial state at the row's own last real step.
    """
    step = CELL_STEPS[cell]
    B, T, _ = x.shape
    a, c = a0, c0  # (B, H) each
    outputs = np.zeros((B, T, weights.hidden_size))  # (B, T, H)
    for t in range(T - 1, -1, -1) if reverse else range(T):
        live = (t < lengths)[:, None]  # (B, 1): rows with a real step at t
        ax = np.concatenate([a, x[:, t]], axis=1)  # (B, H+F): row b is [a⟨t−1⟩; x⟨t⟩] of sequence b
        pre = ax @ weights.W.T + weights.b  # (B, G·H): W [a; x] + b, one product for every gate
        a_new, c_new = step(pre, a, c)  # (B, H) each
        a = np.where(live, a_new, a)  # (B, H)
        c = None if c is None else np.where(live, c_new, c)  # (B, H)
        outputs[:, t] = np.where(live, a, 0.0)  # (B, H)
    return outputs, a, c


@dataclass(frozen=True)
class StackOutput:
    outputs: Array  # (B, T, D·H): last layer, forward half [..., :H], backward half [..., H:]
    h_n: Array  # (L·D, B, H): index l·D + d, PyTorch's order
    c_n: Array | None  # (L·D, B, H), LSTM only


@dataclass(frozen=True)
class RecurrentStack:
    """nn.RNN / nn.LSTM / nn.GRU (batch-first, eval mode) as fused numpy weights: layers[l][d]."""

    cell: str
    layers: tuple[tuple[FusedDirection, ...], ...]

    @classmethod
    def from_state_dict(
        cls, cell: str, num_layers: int, bidirectional: bool, state: Mapping[str, Any], prefix: str = "",
    ) -> RecurrentStack:
        """Read `{prefix}weight_ih_l{k}[_reverse]` etc. (tensors or arrays) into float64."""
        def get(name: str) -> Array:
            return np.asarray(state[prefix + name], dtype=np.float64)

        suffixes = ("", "_reverse") if bidirectional else ("",)
        layers = tuple(
            tuple(fuse(cell, *(get(f"{kind}_l{k}{s}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
                  for s in suffixes)
            for k in range(num_layers)
        )
        return cls(cell, layers)

    @property
    def hidden_size(self) -> int:
        return self.layers[0][0].hidden_size

    def __call__(self, x: Array, lengths: Array, h0: Array | None = None, c0: Array | None = None) -> StackOutput:
        """x (B, T, F), lengths (B,), h0 and c0 (L·D, B, H) or None for zeros."""
        B, D, H = x.shape[0], len(self.layers[0]), self.hidden_size
        state_shape = (len(self.layers) * D, B, H)
        h0 = np.zeros(state_shape) if h0 is None else np.asarray(h0, dtype=np.float64)  # (L·D, B, H)
        if self.cell == "lstm":
            c0 = np.zeros(state_shape) if c0 is None else np.asarray(c0, dtype=np.float64)  # (L·D, B, H)
        layer_in = np.asarray(x, dtype=np.float64)  # (B, T, F)
        h_n, c_n = [], []
        for k, directions in enumerate(self.layers):
            halves = []
            for d, weights in enumerate(directions):
                i = k * D + d
                out, a, c = run_direction(self.cell, weights, layer_in, lengths, h0[i],
                                          None if self.cell != "lstm" else c0[i], reverse=d == 1)
                halves.append(out)  # (B, T, H)
                h_n.append(a)  # (B, H)
                c_n.append(c)  # (B, H) or None
            layer_in = np.concatenate(halves, axis=2)  # (B, T, D·H): the next layer's input
        return StackOutput(layer_in, np.stack(h_n), np.stack(c_n) if self.cell == "lstm" else None)


def conv_frames(z: Array, lengths: Array, weight: Array, bias: Array, stride: int) -> tuple[Array, Array]:
    """The input stage: z (B, T, F) normalised steps, weight (C, F, k), bias (C,) -> frames (B, ⌈T/s⌉, C) and
    their lengths (B,) ⌈length / s⌉."""
    B, T, _ = z.shape
    k = weight.shape[2]
    before = (k - 1) // 2
    real = (np.arange(T)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
    padded = np.zeros((B, T + k - 1, z.shape[2]))  # (B, T + k − 1, F): zeros around and past each row
    padded[:, before : before + T] = np.where(real, z, 0.0)
    frames = -(-T // stride)  # ⌈T / s⌉
    starts = np.arange(frames) * stride  # (T',): frame j reads padded[j·s : j·s + k]
    windows = np.stack([padded[:, j : j + k] for j in starts], axis=1)  # (B, T', k, F)
    u = np.einsum("bjtf,cft->bjc", windows, weight) + bias  # (B, T', C)
    return np.maximum(u, 0.0), -(-lengths // stride)


def linear(v: Array, weight: Array, bias: Array | None) -> Array:
    """v (..., I) @ weight (O, I)ᵀ + bias (O,): (..., O)."""
    return v @ weight.T + (0.0 if bias is None else bias)


def masked_softmax(scores: Array, mask: Array) -> Array:
    """Softmax over the real steps (B, T) -> (B, T), exactly 0 on padding (and on a row with no steps)."""
    scores = np.where(mask, scores, np.finfo(np.float64).min)  # (B, T)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))  # (B, T)
    return e / e.sum(axis=1, keepdims=True) * mask  # (B, T)


@dataclass(frozen=True)
class ReferenceEncoder:
    """`RecurrentEncoder`'s forward in float64 numpy: normalisation, input stage, recurrent stack, attention,
    head (and a regressor's scaling back to target units)."""

    config: EncoderConfig
    stack: RecurrentStack
    params: Mapping[str, Array]  # every state-dict tensor outside the stack, float64

    @classmethod
    def from_state_dict(cls, config: EncoderConfig, state: Mapping[str, Any]) -> ReferenceEncoder:
        stack = RecurrentStack.from_state_dict(config.cell, config.num_layers, config.bidirectional, state, "rnn.")
        params = {k: np.asarray(v, dtype=np.float64) for k, v in state.items() if not k.startswith("rnn.")}
        return cls(config, stack, params)

    @classmethod
    def from_encoder(cls, model: RecurrentEncoder) -> ReferenceEncoder:
        return cls.from_state_dict(model.config, model.state_dict())

    def __call__(self, x: Array, lengths: Array, h0: Array | None = None, c0: Array | None = None) -> dict[str, Array]:
        """x (B, T, F) raw, lengths (B,), h0/c0 (L, B, H) for unidirectional models; outputs by contract name."""
        cfg, p = self.config, self.params
        lengths = np.asarray(lengths, dtype=np.int64)  # (B,)
        z = (np.asarray(x, dtype=np.float64) - p["feature_mean"]) * p["feature_inv_std"]  # (B, T, F)
        if cfg.input_stage == "conv":
            z, lengths = conv_frames(z, lengths, p["input_stage.conv.weight"], p["input_stage.conv.bias"],
                                     cfg.conv_stride)  # (B, T', C), (B,)
        rec = self.stack(z, lengths, h0, c0)
        mask = np.arange(z.shape[1])[None, :] < lengths[:, None]  # (B, T')
        result = {"outputs": rec.outputs, "h_n": rec.h_n}  # (B, T, D·H), (L·D, B, H)
        if rec.c_n is not None:
            result["c_n"] = rec.c_n  # (L·D, B, H)
        summary = self.last_layer_state(rec.h_n)  # (B, D·H)
        if cfg.attention == "additive":
            result["context"], result["attention"] = self.attend(rec.outputs, summary, mask)  # (B, D·H), (B, T)
            summary = result["context"]
        head = linear(summary, p["head.weight"], p["head.bias"])  # (B, C) logits, or (B, K) standardised
        if cfg.task == "regress":
            result["prediction"] = head * p["target_std"] + p["target_mean"]  # (B, K) in target units
        else:
            result["logits"] = head  # (B, C)
        if cfg.step_logits:
            step_logits = linear(rec.outputs, p["head.weight"], p["head.bias"])  # (B, T, C)
            result["step_logits"] = step_logits * mask[..., None]  # (B, T, C), 0 on padding
        return result

    def last_layer_state(self, h_n: Array) -> Array:
        """The last layer's final states, directions concatenated: (L·D, B, H) -> (B, D·H)."""
        D = self.config.num_directions
        return np.concatenate([h_n[-D + d] for d in range(D)], axis=1)  # (B, D·H)

    def attend(self, values: Array, query: Array, mask: Array) -> tuple[Array, Array]:
        """Additive attention: score_t = v · tanh(W1 h_t [+ W2 q + b2]) (W1 has a bias only without a query)."""
        p = self.params
        keys = linear(values, p["attention.W1.weight"], p.get("attention.W1.bias"))  # (B, T, A)
        if self.config.attention_query:
            keys = keys + linear(query, p["attention.W2.weight"], p["attention.W2.bias"])[:, None, :]  # (B, T, A)
        scores = np.tanh(keys) @ p["attention.v.weight"][0]  # (B, T)
        weights = masked_softmax(scores, mask)  # (B, T)
        context = np.einsum("bt,btv->bv", weights, values)  # (B, D·H)
        return context, weights
