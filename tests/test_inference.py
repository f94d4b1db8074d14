"""The inference core on its own: padding, grouping, slicing, session options (seqserve/inference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve.inference import (
    Packed,
    PackedOutputs,
    length_groups,
    pad,
    pad_packed,
    per_sequence,
    session_options,
    with_probabilities,
)

F = 3


def sequences(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, F)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("lengths", [[3, 0, 5, 1], [1], [0, 0], [7, 7, 7]])
def test_pad_puts_each_sequence_at_the_start_of_its_row_and_zeros_after(lengths):
    seqs = sequences(lengths)
    x, got = pad(seqs, F)
    assert x.shape == (len(lengths), max(1, max(lengths)), F) and x.dtype == np.float32
    assert got.tolist() == lengths and got.dtype == np.int64
    for row, s in zip(x, seqs, strict=True):
        np.testing.assert_array_equal(row[: len(s)], s)
        assert not row[len(s):].any()
    packed_x, _ = pad_packed(np.concatenate(seqs), np.array(lengths))
    np.testing.assert_array_equal(packed_x, x)


def test_length_groups_honour_every_bound():
    lengths = np.array([10, 1, 11, 30, 12, 29])
    assert [g.tolist() for g in length_groups(lengths, max_waste=0.5)] == [[1], [0, 2, 4], [5, 3]]
    assert [len(g) for g in length_groups(np.full(10, 5), max_size=4)] == [4, 4, 2]
    assert [len(g) for g in length_groups(np.full(10, 5), max_padded_steps=12)] == [2, 2, 2, 2, 2]
    assert [g.tolist() for g in length_groups(np.array([100]), max_padded_steps=10)] == [[0]]  # never empty
    assert [g.tolist() for g in length_groups(lengths, max_waste=0.5, min_split=3)] == [[1, 0, 2, 4], [5, 3]]
    everything = np.concatenate(length_groups(lengths, max_size=2, max_waste=0.1))
    assert sorted(everything.tolist()) == list(range(len(lengths)))


@pytest.mark.parametrize("max_size, max_padded_steps", [(64, 1 << 16), (64, None), (None, None), (8, 100), (5, 7)])
def test_length_groups_cut_by_size_alone_as_the_general_policy_does(max_size, max_padded_steps):
    """Where only the size can bind (no padding limit), groups are cut without a pass per sequence: the
    same groups as the general policy (a finite but unreachable padding limit takes that path)."""
    rng = np.random.default_rng(0)
    for n in (0, 1, 63, 64, 65, 1000):
        lengths = rng.integers(0, 30, n)
        fast = length_groups(lengths, max_size=max_size, max_padded_steps=max_padded_steps)
        general = length_groups(lengths, max_size=max_size, max_padded_steps=max_padded_steps, max_waste=1e300)
        assert [g.tolist() for g in fast] == [g.tolist() for g in general], n


def test_per_sequence_views_drop_padding_and_copy_nothing():
    lengths = np.array([3, 1, 4])
    B, T, H, C = 3, 4, 5, 2
    rng = np.random.default_rng(1)
    outputs = {"outputs": rng.standard_normal((B, T, H)), "attention": rng.standard_normal((B, T)),
               "h_n": rng.standard_normal((2, B, H)), "logits": rng.standard_normal((B, C))}
    outputs = with_probabilities(outputs)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0)
    rows = per_sequence(outputs, lengths)
    assert [r["outputs"].shape for r in rows] == [(3, H), (1, H), (4, H)] and rows[1]["h_n"].shape == (2, H)
    np.testing.assert_array_equal(rows[2]["attention"], outputs["attention"][2])
    np.testing.assert_array_equal(rows[1]["h_n"], outputs["h_n"][:, 1])
    assert np.shares_memory(rows[0]["outputs"], outputs["outputs"])  # views, not copies


@pytest.mark.parametrize("lengths", [[3, 0, 5, 1], [2], [4, 4]])
def test_packed_sequences_from_a_padded_batch_and_back(lengths):
    seqs = sequences(lengths)
    x, got = pad(seqs, F)
    flat = Packed.from_padded(x, got)
    np.testing.assert_array_equal(flat.steps, np.concatenate(seqs))
    assert flat.starts.tolist() == (np.cumsum(lengths) - lengths).tolist()
    answers = PackedOutputs({"outputs": flat.steps}, got)
    np.testing.assert_array_equal(answers.padded("outputs"), x)
    np.testing.assert_array_equal(answers.padded("outputs", width=x.shape[1] + 2)[:, :x.shape[1]], x)
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(answers.sequence(i)["outputs"], s)


def test_session_options_never_spin_unless_asked():
    assert session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(2, spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert session_options(3).intra_op_num_threads == 3


def test_small_batches_take_the_small_session():
    from servers import REPOSITORY

    from seqserve.inference import OnnxModel
    from seqserve.repository import latest_version

    arch = latest_version(REPOSITORY, "jv_bigru_attn").architecture
    big, small = object(), object()  # stand-ins: only which one is picked matters here
    model = OnnxModel(big, arch, small=(16, small))
    assert model.session_for(1) is small and model.session_for(15) is small
    assert model.session_for(16) is big and model.session_for(64) is big
    assert OnnxModel(big, arch).session_for(1) is big
