"""The numpy reference of the cell equations (model/reference.py) against nn.RNN/LSTM/GRU, the encoder and
onnxruntime; the fused [W_aa | W_ax] product; which step each final state comes from; the doc page's example."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from conftest import CELLS, ROOT, F, H, make_model, ort_run, random_batch, random_state
from test_export import GRID, grid_config, grid_id
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import seqserve.model.reference as reference
from seqserve.model.reference import RecurrentStack, ReferenceEncoder, fuse

FLOAT32_TERMS = 1e-5  # max |reference - float32 run|: float32 rounding over these short sequences
FLOAT64_TERMS = 1e-12  # max |reference - float64 run|: the same equations, both in float64
MUTATION_MISS = 1e-3  # a wrong equation moves some output by at least this much

LENGTHS_BI = (9, 1, 14, 3, 14)  # padded, unsorted, with a single-step row and two full rows
LENGTHS_STREAM = (9, 1, 14, 0, 3)  # a streaming chunk may carry a row with no new steps
T = 14
NN_TYPES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).max())


def encoder_inputs(model, seed: int = 0) -> dict[str, np.ndarray]:
    """A padded mixed-length batch (noise in the padding) and, for a streaming model, a random (h0, c0)."""
    lengths = LENGTHS_STREAM if model.config.streaming else LENGTHS_BI
    x, lengths_t = random_batch(model, lengths, time=T, seed=seed)
    inputs = {"x": x.numpy(), "lengths": lengths_t.numpy()}
    if model.config.streaming:
        h0, c0 = random_state(model, len(lengths), seed=seed + 1)
        inputs["h0"] = h0.numpy()
        if c0 is not None:
            inputs["c0"] = c0.numpy()
    return inputs


def torch_run(model, inputs: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, np.ndarray]:
    """The encoder (a copy, in `dtype`) on `inputs`."""
    model = copy.deepcopy(model).to(dtype)
    args = {k: torch.from_numpy(v) for k, v in inputs.items()}
    args = {k: v.to(dtype) if v.is_floating_point() else v for k, v in args.items()}
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(**args).as_dict().items()}


@pytest.fixture(params=GRID, ids=grid_id)
def exp(request, exported):
    return exported(**grid_config(*request.param))


# ---------------------------------------------------------------- the whole encoder, three runtimes


def test_reference_reproduces_the_encoder_and_onnxruntime(exp):
    """Every output of every cell x layers 1/2 x direction, padded mixed lengths: float32 PyTorch and onnxruntime
    within 1e-5, float64 PyTorch within 1e-12."""
    model = exp.model
    inputs = encoder_inputs(model)
    ref = ReferenceEncoder.from_encoder(model)(**inputs)
    t32 = torch_run(model, inputs, torch.float32)
    t64 = torch_run(model, inputs, torch.float64)
    ort_out = ort_run(exp.session, model, **inputs)
    assert set(ref) == set(t32) == set(ort_out)
    for name, value in ref.items():
        assert value.dtype == np.float64 and value.shape == t32[name].shape, name
        assert max_abs(t64[name], value) < FLOAT64_TERMS, name
        assert max_abs(t32[name], value) < FLOAT32_TERMS, name
        assert max_abs(ort_out[name], value) < FLOAT32_TERMS, name
    pad = np.arange(T)[None, :] >= inputs["lengths"][:, None]  # (B, T)
    assert not ref["outputs"][pad].any()


def test_reference_of_attention_without_query():
    model = make_model(cell="gru", layers=2, bidirectional=True, attention="additive", attention_query=False)
    inputs = encoder_inputs(model, seed=3)
    ref = ReferenceEncoder.from_encoder(model)(**inputs)
    t64 = torch_run(model, inputs, torch.float64)
    for name in ("context", "attention", "logits"):
        assert max_abs(t64[name], ref[name]) < FLOAT64_TERMS, name
    np.testing.assert_allclose(ref["attention"].sum(1), 1.0, atol=1e-12)


def test_row_with_no_steps_keeps_its_state():
    model = make_model(cell="lstm", layers=2, bidirectional=False, attention="none", step_logits=True)
    inputs = encoder_inputs(model)
    ref = ReferenceEncoder.from_encoder(model)(**inputs)
    empty = LENGTHS_STREAM.index(0)
    np.testing.assert_array_equal(ref["h_n"][:, empty], inputs["h0"][:, empty])
    np.testing.assert_array_equal(ref["c_n"][:, empty], inputs["c0"][:, empty])
    assert not ref["outputs"][empty].any() and not ref["step_logits"][empty].any()


# ---------------------------------------------------------------- the recurrent stack alone: nn.RNN/LSTM/GRU


def nn_run(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor, h0, c0) -> tuple[np.ndarray, ...]:
    """A batch-first nn.RNN/LSTM/GRU over a padded batch, packed: (outputs (B, T, D*H), h_n, c_n or None)."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, final = rnn(packed, (h0, c0) if isinstance(rnn, nn.LSTM) else h0)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    h_n, c_n = final if isinstance(rnn, nn.LSTM) else (final, None)
    return out.numpy(), h_n.numpy(), None if c_n is None else c_n.numpy()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cell, layers, bidirectional", GRID, ids=[grid_id(g) for g in GRID])
def test_reference_reproduces_nn_modules(cell, layers, bidirectional, dtype):
    """nn.RNN/LSTM/GRU with non-zero initial states in every layer and direction, padded mixed lengths."""
    torch.manual_seed(7)
    rnn = NN_TYPES[cell](F, H, num_layers=layers, bidirectional=bidirectional, batch_first=True).to(dtype).eval()
    B, D = len(LENGTHS_BI), 2 if bidirectional else 1
    x = torch.randn(B, T, F, dtype=dtype)  # (B, T, F), noise in the padding too
    lengths = torch.tensor(LENGTHS_BI)
    h0 = 0.5 * torch.randn(layers * D, B, H, dtype=dtype)  # (L*D, B, H)
    c0 = 0.5 * torch.randn(layers * D, B, H, dtype=dtype) if cell == "lstm" else None
    expected = nn_run(rnn, x, lengths, h0, c0)
    stack = RecurrentStack.from_state_dict(cell, layers, bidirectional, rnn.state_dict())
    got = stack(x.numpy(), lengths.numpy(), h0.numpy(), None if c0 is None else c0.numpy())
    tolerance = FLOAT64_TERMS if dtype == torch.float64 else FLOAT32_TERMS
    for name, want, have in zip(("outputs", "h_n", "c_n"), expected, (got.outputs, got.h_n, got.c_n), strict=True):
        assert (want is None) == (have is None), name
        if want is not None:
            assert want.shape == have.shape and max_abs(want, have) < tolerance, name


def _lstm_gates_i_f_o_g(pre, a, c):  # a misreading of PyTorch's gate order i, f, g, o
    i, f, o, g = np.split(pre, 4, axis=1)
    c = reference.sigmoid(f) * c + reference.sigmoid(i) * np.tanh(g)
    return reference.sigmoid(o) * np.tanh(c), c


def _gru_update_gate_the_other_way(pre, a, c):  # a = z n + (1 - z) a: the convention of other write-ups
    r_pre, z_pre, n_a, n_x = np.split(pre, 4, axis=1)
    z = reference.sigmoid(z_pre)
    return z * np.tanh(n_x + reference.sigmoid(r_pre) * n_a) + (1.0 - z) * a, None


def _rnn_without_tanh(pre, a, c):
    return pre, None


MUTATIONS = {"lstm": _lstm_gates_i_f_o_g, "gru": _gru_update_gate_the_other_way, "rnn": _rnn_without_tanh}


@pytest.mark.parametrize("cell", CELLS)
def test_the_comparison_catches_a_wrong_equation(cell, monkeypatch):
    """The checks above can fail: one wrong equation per cell moves the outputs far past FLOAT32_TERMS."""
    model = make_model(cell=cell, layers=1, bidirectional=True)
    inputs = encoder_inputs(model)
    t64 = torch_run(model, inputs, torch.float64)
    monkeypatch.setitem(reference.CELL_STEPS, cell, MUTATIONS[cell])
    ref = ReferenceEncoder.from_encoder(model)(**inputs)
    assert max_abs(t64["outputs"], ref["outputs"]) > MUTATION_MISS


# ---------------------------------------------------------------- input stage and regression head

CONV_STAGES = [(5, 3), (4, 4), (8, 4), (1, 1)]  # (kernel, stride): overlapping, patches, wide, pointwise


@pytest.mark.parametrize("kernel, stride", CONV_STAGES, ids=[f"k{k}s{s}" for k, s in CONV_STAGES])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_of_the_conv_stage_and_regressor(cell, kernel, stride):
    """Unsorted lengths with one step and lengths off the stride; noise in the padding."""
    model = make_model(cell=cell, layers=2, input_stage="conv", conv_channels=6, conv_kernel=kernel,
                       conv_stride=stride, task="regress", num_targets=2, class_labels=(),
                       target_mean=(3.0, -1.0), target_std=(2.0, 0.5))
    inputs = encoder_inputs(model)
    ref = ReferenceEncoder.from_encoder(model)(**inputs)
    t64 = torch_run(model, inputs, torch.float64)
    assert sorted(ref) == sorted(t64)
    for name in t64:
        assert ref[name].shape == t64[name].shape, name
        assert max_abs(t64[name], ref[name]) < FLOAT64_TERMS, name


def test_the_comparison_catches_a_wrong_conv_padding(monkeypatch):
    """All the kernel's padding after the steps instead of split around them moves the frames."""
    model = make_model(input_stage="conv", conv_channels=6, conv_kernel=5, conv_stride=3)
    inputs = encoder_inputs(model)
    t64 = torch_run(model, inputs, torch.float64)

    def padded_after(z, lengths, weight, bias, stride):
        shifted = np.concatenate([z[:, 2:], np.zeros_like(z[:, :2])], axis=1)  # (B, T, F) two steps early
        return conv_frames(shifted, lengths, weight, bias, stride)

    conv_frames = reference.conv_frames
    monkeypatch.setattr(reference, "conv_frames", padded_after)
    ref = ReferenceEncoder.from_encoder(model)(**inputs)
    assert max_abs(t64["outputs"], ref["outputs"]) > MUTATION_MISS


# ---------------------------------------------------------------- the fused form


@pytest.mark.parametrize("cell", CELLS)
def test_fused_product_equals_the_two_products(cell):
    """[W_aa | W_ax] [a; x] = W_aa a + W_ax x, gate by gate (for the GRU's n gate: its a and x parts apart)."""
    rng = np.random.default_rng(0)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    w_ih, w_hh = rng.standard_normal((G * H, F)), rng.standard_normal((G * H, H))  # W_ax, W_aa as PyTorch stores them
    b_ih, b_hh = rng.standard_normal(G * H), rng.standard_normal(G * H)
    a, x = rng.standard_normal((6, H)), rng.standard_normal((6, F))  # (B, H), (B, F)
    fused = fuse(cell, w_ih, w_hh, b_ih, b_hh)
    rows = reference.FUSED_ROWS[cell] * H
    assert fused.W.shape == (rows, H + F) and fused.W_aa.shape == (rows, H) and fused.W_ax.shape == (rows, F)
    if cell != "gru":
        np.testing.assert_array_equal(fused.W_aa, w_hh)
        np.testing.assert_array_equal(fused.W_ax, w_ih)
    one = np.concatenate([a, x], axis=1) @ fused.W.T + fused.b  # (B, rows): one product
    by_hidden, by_input = a @ w_hh.T + b_hh, x @ w_ih.T + b_ih  # (B, G*H) each: two products
    if cell == "gru":
        np.testing.assert_allclose(one[:, : 2 * H], by_hidden[:, : 2 * H] + by_input[:, : 2 * H],
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(one[:, 2 * H : 3 * H], by_hidden[:, 2 * H :], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(one[:, 3 * H :], by_input[:, 2 * H :], rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(one, by_hidden + by_input, rtol=1e-12, atol=1e-12)
    assert not np.allclose(one[:, :H], by_hidden[:, :H])  # the input's share is really in the one product


# ---------------------------------------------------------------- which step each final state comes from


@pytest.mark.parametrize("cell", CELLS)
def test_final_states_of_a_bidirectional_model(cell):
    """h_n[-2] is the forward direction at each row's last real step (not at T-1, which is padding for short
    rows); h_n[-1] is the backward direction after reading back to step 0: the same cell run forwards over the
    row's real steps reversed."""
    model = make_model(cell=cell, layers=2, bidirectional=True)
    inputs = encoder_inputs(model)
    encoder = ReferenceEncoder.from_encoder(model)
    lengths = inputs["lengths"]
    for name, out in (("reference", encoder(**inputs)), ("torch", torch_run(model, inputs, torch.float32))):
        outputs, h_n = out["outputs"], out["h_n"]  # (B, T, 2H), (L*2, B, H)
        for b, length in enumerate(lengths):
            np.testing.assert_allclose(h_n[-2][b], outputs[b, length - 1, :H], atol=1e-7, err_msg=name)
            np.testing.assert_allclose(h_n[-1][b], outputs[b, 0, H:], atol=1e-7, err_msg=name)
            if length < T:
                assert not outputs[b, -1].any() and np.abs(h_n[-2][b]).max() > 0.01, name

    # the backward direction alone: layer 2's reverse weights as a forward cell over layer 1's outputs reversed
    z = (inputs["x"] - encoder.params["feature_mean"]) * encoder.params["feature_inv_std"]  # (B, T, F)
    first_layer = RecurrentStack(cell, encoder.stack.layers[:1])(z, lengths).outputs  # (B, T, 2H)
    backward_only = RecurrentStack(cell, ((encoder.stack.layers[1][1],),))
    h_n = encoder(**inputs)["h_n"]
    for b, length in enumerate(lengths):
        reversed_steps = first_layer[b : b + 1, :length][:, ::-1]  # (1, length, 2H): steps length-1 .. 0
        final = backward_only(reversed_steps, np.array([length])).h_n[0, 0]  # (H,)
        np.testing.assert_allclose(h_n[-1][b], final, atol=1e-12)


# ---------------------------------------------------------------- docs/recurrent-cells.md


def test_doc_page_examples_run(capsys):
    text = (ROOT / "docs" / "recurrent-cells.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/recurrent-cells.md", "exec"), {})
    first, far = capsys.readouterr().out.splitlines()
    assert first == "torch.Size([4, 2])" and float(far) > 0.05
