"""The regression task and the strided convolution input stage of RecurrentEncoder, and their config."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CELLS, H, make_config, make_model, random_batch
from tiny_models import TARGET_MEAN, TARGET_STD, conv_config, model_of, regressor_config

from seqserve.contract import FRAMES, frame_lengths, output_names, output_specs
from seqserve.model.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from seqserve.model.config import EncoderConfig
from seqserve.model.errors import ConfigError

# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"task": "forecast"}, "task"),
        ({"task": "regress", "num_targets": 0, "class_labels": ()}, "num_targets"),
        ({"task": "regress", "num_targets": 1}, "class_labels"),  # make_config gives labels
        ({"num_targets": 2}, "num_targets"),  # a classifier has no targets
        ({"target_mean": (1.0,)}, "target_mean"),  # nor target statistics
        ({"task": "regress", "num_targets": 2, "class_labels": (), "target_mean": (1.0,)}, "target_mean"),
        ({"task": "regress", "num_targets": 1, "class_labels": (), "target_std": (0.0,)}, "target_std"),
        ({"task": "regress", "num_targets": 1, "class_labels": (), "target_mean": (math.nan,)}, "target_mean"),
        ({"task": "regress", "num_targets": 1, "class_labels": (), "bidirectional": False, "step_logits": True},
         "step_logits"),
        ({"input_stage": "patches"}, "input_stage"),
        ({"input_stage": "conv", "conv_channels": 0}, "conv_channels"),
        ({"input_stage": "conv", "conv_kernel": 2, "conv_stride": 3}, "conv_kernel"),
        ({"input_stage": "conv", "conv_stride": 0}, "conv_stride"),
        ({"input_stage": "conv", "bidirectional": False, "step_logits": True}, "step_logits"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        make_config(**changes)


def test_regress_config_records_no_classes_and_round_trips():
    cfg = regressor_config(target_mean=list(TARGET_MEAN), target_std=None)  # lists and None are accepted
    assert cfg.num_classes == 0 and cfg.num_outputs == 2
    assert cfg.target_mean == TARGET_MEAN and cfg.target_std == ()
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    arch = cfg.architecture
    assert arch.task == "regress" and arch.num_targets == 2 and arch.num_classes == 0
    assert "prediction" in output_names(arch) and "logits" not in output_names(arch)


def test_old_config_reads_with_the_new_defaults():
    old = {k: v for k, v in make_config().to_dict().items()
           if k not in ("task", "num_targets", "target_mean", "target_std", "input_stage", "conv_channels",
                        "conv_kernel", "conv_stride")}
    cfg = EncoderConfig.from_dict(old)
    assert cfg.task == "classify" and cfg.input_stage == "none" and cfg.architecture == make_config().architecture


def test_conv_models_do_not_stream():
    assert not conv_config(bidirectional=False, attention="none").streaming
    assert make_config(bidirectional=False).streaming


def test_old_checkpoint_loads_unchanged(tmp_path):
    model = make_model()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=True)
    for name in ("task", "num_targets", "target_mean", "target_std", "input_stage", "conv_channels",
                 "conv_kernel", "conv_stride"):
        del payload["config"][name]
    assert payload["format"] == FORMAT
    torch.save(payload, path)
    loaded, _ = load_checkpoint(path)
    x, lengths = random_batch(model, [5, 2, 4])
    torch.testing.assert_close(loaded(x, lengths).logits, model(x, lengths).logits, atol=0, rtol=0)


# ---------------------------------------------------------------- regression


@pytest.mark.parametrize("cell", CELLS)
def test_regressor_predicts_in_target_units(cell):
    model = model_of(regressor_config(cell=cell))
    x, lengths = random_batch(model, [6, 1, 4])
    out = model(x, lengths)
    assert out.logits is None and out.prediction is not None and out.prediction.shape == (3, 2)
    assert sorted(out.as_dict()) == sorted(output_names(model.config.architecture))
    z = model.head_output(model.summary(out))  # (B, K) standardised
    expected = z * torch.tensor(TARGET_STD) + torch.tensor(TARGET_MEAN)
    torch.testing.assert_close(out.prediction, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.standardise_targets(out.prediction), z, atol=1e-5, rtol=1e-5)


def test_regressor_checkpoint_round_trip(tmp_path):
    model = model_of(regressor_config())
    save_checkpoint(tmp_path / "c.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "c.pt")
    x, lengths = random_batch(model, [3, 7])
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(x, lengths).prediction, model(x, lengths).prediction, atol=0, rtol=0)


# ---------------------------------------------------------------- conv input stage


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_conv_stage_padded_batch_equals_each_row_alone(cell, bidirectional):
    """Unsorted lengths, length 1, lengths not divisible by the stride, noise on the padding."""
    model = model_of(conv_config(cell=cell, bidirectional=bidirectional, layers=2))
    lengths = [11, 1, 7, 3, 13, 6]
    x, lengths_t = random_batch(model, lengths, time=14)
    out = model(x, lengths_t)
    frames = frame_lengths(model.config.architecture, lengths_t)
    assert frames.tolist() == [math.ceil(n / 3) for n in lengths]
    D = 2 if bidirectional else 1
    assert out.outputs.shape == (6, math.ceil(14 / 3), D * H) and out.attention.shape == (6, math.ceil(14 / 3))
    for b, n in enumerate(lengths):
        alone = model(x[b : b + 1, :n], lengths_t[b : b + 1])
        m = int(frames[b])
        assert alone.outputs.shape[1] == m
        torch.testing.assert_close(out.outputs[b, :m], alone.outputs[0], atol=1e-6, rtol=1e-5)
        assert torch.all(out.outputs[b, m:] == 0) and torch.all(out.attention[b, m:] == 0)
        torch.testing.assert_close(out.logits[b], alone.logits[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.h_n[:, b], alone.h_n[:, 0], atol=1e-6, rtol=1e-5)


def test_conv_stage_reads_every_real_step():
    """Changing the last real step of a row changes its answer; changing the first padded step does not."""
    model = model_of(conv_config(conv_kernel=3, conv_stride=3))
    x, lengths = random_batch(model, [7, 7], time=9)
    base = model(x, lengths).logits
    moved_last, moved_pad = x.clone(), x.clone()
    moved_last[0, 6] += 5.0
    moved_pad[1, 7] += 5.0
    assert not torch.allclose(model(moved_last, lengths).logits[0], base[0])
    torch.testing.assert_close(model(moved_pad, lengths).logits, base, atol=0, rtol=0)


def test_conv_regressor_contract_names_frames():
    cfg = conv_config(task="regress", num_targets=1, class_labels=())
    shapes = {s.name: s.shape for s in output_specs(cfg.architecture)}
    assert shapes["prediction"] == ("batch", 1) and "logits" not in shapes
    assert shapes["outputs"][1] == FRAMES and shapes["attention"] == ("batch", FRAMES)
