"""RecurrentEncoder in PyTorch: shapes, direction slices, exact variable lengths, attention, streaming."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import CELLS, C, F, H, make_config, make_model, random_batch, random_state

from seqserve.contract import output_names
from seqserve.model.config import EncoderConfig
from seqserve.model.errors import ConfigError, InputShapeError

ARCHS = list(itertools.product(CELLS, (1, 2), (False, True), ("additive", "none")))


def _arch_id(a) -> str:
    cell, layers, bi, att = a
    return f"{cell}-L{layers}-{'bi' if bi else 'uni'}-{'att' if att == 'additive' else 'noatt'}"


# ---------------------------------------------------------------- 1. shapes


@pytest.mark.parametrize("arch", ARCHS, ids=_arch_id)
def test_output_shapes(arch):
    cell, layers, bi, attention = arch
    step_logits = not bi
    model = make_model(cell=cell, layers=layers, bidirectional=bi, attention=attention, step_logits=step_logits)
    B, T, D = 3, 7, 2 if bi else 1
    x, lengths = random_batch(model, [7, 2, 5], time=T)
    out = model(x, lengths)

    assert out.outputs.shape == (B, T, D * H)
    assert out.h_n.shape == (layers * D, B, H)
    if cell == "lstm":
        assert out.c_n is not None and out.c_n.shape == (layers * D, B, H)
    else:
        assert out.c_n is None
    if attention == "additive":
        assert out.context.shape == (B, D * H)
        assert out.attention.shape == (B, T)
    else:
        assert out.context is None and out.attention is None
    assert out.logits.shape == (B, C)
    if step_logits:
        assert out.step_logits.shape == (B, T, C)
    else:
        assert out.step_logits is None
    # The outputs are exactly the contract's, in name.
    assert sorted(out.as_dict()) == sorted(output_names(model.config.architecture))
    assert all(v.dtype == torch.float32 for v in out.as_dict().values())


@pytest.mark.parametrize("cell", CELLS)
def test_step_logits_absent_unless_configured(cell):
    model = make_model(cell=cell, bidirectional=False, attention="none", step_logits=False)
    x, lengths = random_batch(model, [4, 2])
    assert model(x, lengths).step_logits is None


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_direction_slices(cell):
    """outputs[..., :H] at a row's last real step is h_n[-2]; outputs[..., H:] at step 0 is h_n[-1]."""
    model = make_model(cell=cell, layers=2, bidirectional=True)
    x, lengths = random_batch(model, [6, 1, 4, 9, 3], time=9)
    out = model(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out.outputs[b, n - 1, :H], out.h_n[-2, b], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.outputs[b, 0, H:], out.h_n[-1, b], atol=1e-6, rtol=0)
    # and the backward half at the last step is not the final backward state (it is a 1-step run)
    assert not torch.allclose(out.outputs[3, 8, H:], out.h_n[-1, 3])


@pytest.mark.parametrize("cell", CELLS)
def test_unidirectional_last_step_is_final_state(cell):
    model = make_model(cell=cell, layers=2, bidirectional=False, attention="none")
    x, lengths = random_batch(model, [6, 1, 4], time=8)
    out = model(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out.outputs[b, n - 1], out.h_n[-1, b], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- 2. padded batch == sequences alone


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_padded_batch_equals_each_sequence_alone(cell, bidirectional):
    model = make_model(
        cell=cell, layers=2, bidirectional=bidirectional, attention="additive", step_logits=not bidirectional
    )
    lengths = [5, 1, 9, 3, 9, 2]  # unsorted, repeated, includes 1
    T = 11  # longer than any row: every row has padding
    x, lengths_t = random_batch(model, lengths, time=T, seed=3)
    with torch.no_grad():
        batch = model(x, lengths_t)
        for b, n in enumerate(lengths):
            alone = model(x[b : b + 1, :n], torch.tensor([n]))
            close = dict(atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(batch.outputs[b, :n], alone.outputs[0], **close)
            torch.testing.assert_close(batch.h_n[:, b], alone.h_n[:, 0], **close)
            if cell == "lstm":
                torch.testing.assert_close(batch.c_n[:, b], alone.c_n[:, 0], **close)
            torch.testing.assert_close(batch.context[b], alone.context[0], **close)
            torch.testing.assert_close(batch.attention[b, :n], alone.attention[0], **close)
            torch.testing.assert_close(batch.logits[b], alone.logits[0], **close)
            if not bidirectional:
                torch.testing.assert_close(batch.step_logits[b, :n], alone.step_logits[0], **close)
            # padding is exactly zero
            assert torch.count_nonzero(batch.outputs[b, n:]) == 0
            assert torch.count_nonzero(batch.attention[b, n:]) == 0
            if not bidirectional:
                assert torch.count_nonzero(batch.step_logits[b, n:]) == 0


@pytest.mark.parametrize("cell", CELLS)
def test_padding_content_is_ignored(cell):
    """Whatever the padding holds (zeros or huge values), the results are the same."""
    model = make_model(cell=cell, layers=2, bidirectional=True)
    x, lengths = random_batch(model, [4, 7, 2], time=7, seed=5)
    x_zero = x.clone()
    x_huge = x.clone()
    pad = torch.arange(7).unsqueeze(0) >= lengths.unsqueeze(1)
    x_zero[pad] = 0.0
    x_huge[pad] = 1e6
    with torch.no_grad():
        a, b = model(x_zero, lengths).as_dict(), model(x_huge, lengths).as_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------- 3. attention


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths", [[6, 2, 9, 4], [1, 8, 3], [1]], ids=["mixed", "with_len1", "single_len1"])
def test_attention_weights(cell, bidirectional, lengths):
    model = make_model(cell=cell, layers=2, bidirectional=bidirectional, attention="additive")
    x, lengths_t = random_batch(model, lengths, time=max(lengths) + 2, seed=7)
    with torch.no_grad():
        w = model(x, lengths_t).attention  # (B, T)
    assert not torch.isnan(w).any()
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(len(lengths)), atol=1e-6, rtol=0)
    for b, n in enumerate(lengths):
        assert torch.count_nonzero(w[b, n:]) == 0
        if n == 1:
            assert w[b, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_attention_without_query_scores_steps_alone():
    model = make_model(cell="gru", layers=2, bidirectional=True, attention_query=False)
    assert model.attention.W2 is None and model.attention.W1.bias is not None
    x, lengths = random_batch(model, [6, 1, 4], time=7, seed=3)
    with torch.no_grad():
        w = model(x, lengths).attention  # (B, T)
        alone = model(x[:1, :6], lengths[:1]).attention  # (1, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(3), atol=1e-6, rtol=0)
    assert torch.count_nonzero(w[0, 6:]) == 0 and w[1, 0].item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(w[0, :6], alone[0], atol=1e-6, rtol=0)


def test_attention_survives_large_scores():
    """Huge inputs saturate the scores; the masked softmax must not produce NaN or leak onto padding."""
    model = make_model(cell="gru", layers=1, bidirectional=True)
    with torch.no_grad():
        model.attention.v.weight.mul_(1e4)
    x, lengths = random_batch(model, [5, 1, 3], time=6, seed=2)
    w = model(x * 100, lengths).attention.detach()
    assert not torch.isnan(w).any()
    torch.testing.assert_close(w.sum(-1), torch.ones(3), atol=1e-6, rtol=0)
    assert torch.count_nonzero(w[1, 1:]) == 0 and torch.count_nonzero(w[2, 3:]) == 0


def test_attention_row_with_no_steps_is_zero_not_nan():
    model = make_model(cell="lstm", layers=1, bidirectional=False, attention="additive")
    x, lengths = random_batch(model, [4, 0, 2], time=4)
    out = model(x, lengths)
    assert not torch.isnan(out.attention).any() and not torch.isnan(out.context).any()
    assert torch.count_nonzero(out.attention[1]) == 0
    assert torch.count_nonzero(out.context[1]) == 0


# ---------------------------------------------------------------- 4. streaming in PyTorch

CHUNKS = (7, 1, 13)  # over T = 21


def _run_chunks(model, x, lengths_per_chunk, h0, c0):
    """Feed x (B, T, F) chunk by chunk, carrying (h, c); returns the concatenated per-step outputs."""
    outs, steps, start = [], [], 0
    h, c = h0, c0
    for size, lens in zip(CHUNKS, lengths_per_chunk, strict=True):
        with torch.no_grad():
            out = model(x[:, start : start + size], torch.tensor(lens), h, c)
        outs.append(out.outputs)
        steps.append(out.step_logits)
        h, c = out.h_n, out.c_n
        start += size
    return torch.cat(outs, 1), torch.cat(steps, 1), h, c


@pytest.mark.parametrize("random_initial_state", [False, True], ids=["zero_state", "random_state"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_streaming_chunks_equal_full_run(cell, layers, random_initial_state):
    model = make_model(cell=cell, layers=layers, bidirectional=False, attention="none", step_logits=True)
    B, T = 3, sum(CHUNKS)
    x, lengths = random_batch(model, [T] * B, seed=11)
    h0, c0 = random_state(model, B, seed=4) if random_initial_state else model.initial_state(B)
    with torch.no_grad():
        full = model(x, lengths, h0, c0)
    outputs, step_logits, h, c = _run_chunks(model, x, [[n] * B for n in CHUNKS], h0, c0)
    close = dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outputs, full.outputs, **close)
    torch.testing.assert_close(step_logits, full.step_logits, **close)
    torch.testing.assert_close(h, full.h_n, **close)
    if cell == "lstm":
        torch.testing.assert_close(c, full.c_n, **close)
    else:
        assert c is None


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_streaming_row_with_no_steps_keeps_its_state(cell, layers):
    model = make_model(cell=cell, layers=layers, bidirectional=False, attention="none", step_logits=True)
    x, lengths = random_batch(model, [5, 0, 3], time=5, seed=9)
    h0, c0 = random_state(model, 3, seed=12)
    with torch.no_grad():
        out = model(x, lengths, h0, c0)
        alone = model(x[2:3, :3], torch.tensor([3]), h0[:, 2:3], None if c0 is None else c0[:, 2:3])
    assert torch.equal(out.h_n[:, 1], h0[:, 1])
    if cell == "lstm":
        assert torch.equal(out.c_n[:, 1], c0[:, 1])
    assert torch.count_nonzero(out.outputs[1]) == 0
    assert torch.count_nonzero(out.step_logits[1]) == 0
    # the other rows are unaffected by the empty one
    torch.testing.assert_close(out.h_n[:, 2], alone.h_n[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.outputs[2, :3], alone.outputs[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_streaming_uneven_chunks_per_row(cell):
    """Rows advance by different amounts per chunk (one pauses with 0 steps); each still equals its full run."""
    model = make_model(cell=cell, layers=2, bidirectional=False, attention="none", step_logits=True)
    B, T = 2, sum(CHUNKS)
    x, _ = random_batch(model, [T] * B, seed=13)
    # row 0 gets 7 | 1 | 13 real steps; row 1 gets 7 | 0 | 13 of its first 20 steps (a pause mid-stream)
    x1 = torch.cat([x[1, :7], torch.zeros(1, F), x[1, 7:20]], 0)  # (21, F), step 7 is padding
    xb = torch.stack([x[0], x1])
    h0, c0 = random_state(model, B, seed=3)
    outs, _, h, c = _run_chunks(model, xb, [[7, 7], [1, 0], [13, 13]], h0, c0)
    with torch.no_grad():
        full0 = model(x[0:1], torch.tensor([T]), h0[:, :1], None if c0 is None else c0[:, :1])
        full1 = model(x[1:2, :20], torch.tensor([20]), h0[:, 1:], None if c0 is None else c0[:, 1:])
    close = dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h[:, 0], full0.h_n[:, 0], **close)
    torch.testing.assert_close(h[:, 1], full1.h_n[:, 0], **close)
    torch.testing.assert_close(outs[1, :7], full1.outputs[0, :7], **close)
    assert torch.count_nonzero(outs[1, 7]) == 0  # the paused step
    torch.testing.assert_close(outs[1, 8:], full1.outputs[0, 7:], **close)


# ---------------------------------------------------------------- 8. bad input, clear errors


def test_unknown_cell_is_a_config_error_naming_cell():
    with pytest.raises(ConfigError, match=r"^cell: .*'foo'"):
        EncoderConfig(cell="foo")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"attention": "dot"}, "attention"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": -1}, "num_layers"),
        ({"input_size": 2.5}, "input_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"bidirectional": True, "step_logits": True}, "step_logits"),
        ({"class_labels": ("a", "b")}, "class_labels"),
        ({"feature_mean": (0.0,)}, "feature_mean"),
        ({"feature_std": (1.0, 1.0, 0.0, 1.0, 1.0)}, "feature_std"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        make_config(**changes)


def test_config_from_dict_rejects_unknown_fields_and_round_trips():
    cfg = make_config(cell="gru", layers=2)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="hidden"):
        EncoderConfig.from_dict({**cfg.to_dict(), "hidden": 3})


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError):
        EncoderConfig(cell="transformer")


def test_wrong_feature_count_names_x():
    model = make_model(cell="gru", bidirectional=True)
    x = torch.randn(2, 4, F + 1)
    with pytest.raises(InputShapeError, match=r"^x: .*\(2, 4, 6\)"):
        model(x, torch.tensor([4, 2]))
    with pytest.raises(InputShapeError, match=r"^x:"):
        model(torch.randn(4, F), torch.tensor([4]))


def test_wrong_lengths_shape_names_lengths():
    model = make_model(cell="gru", bidirectional=True)
    with pytest.raises(InputShapeError, match=r"^lengths:"):
        model(torch.randn(2, 4, F), torch.tensor([4]))


@pytest.mark.parametrize("bad", [[5, 2], [-1, 2]], ids=["longer_than_T", "negative"])
def test_lengths_out_of_range_names_lengths(bad):
    model = make_model(cell="lstm", bidirectional=True)
    with pytest.raises(InputShapeError, match=r"^lengths:"):
        model(torch.randn(2, 4, F), torch.tensor(bad))


@pytest.mark.parametrize("case", ["h0_without_c0", "h0_wrong_layers"])
def test_bad_initial_state_names_the_state(case):
    model = make_model(cell="lstm", layers=2, bidirectional=False, attention="none")
    x = torch.randn(2, 4, F)
    lengths = torch.tensor([4, 2])
    with pytest.raises(InputShapeError, match=r"^(h0|c0):"):
        if case == "h0_without_c0":
            model(x, lengths, torch.zeros(2, 2, H))
        else:
            model(x, lengths, torch.zeros(1, 2, H), torch.zeros(1, 2, H))
