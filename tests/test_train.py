"""Training: a one-epoch smoke run of the CLI, its outputs, the loss and the CLI's argument errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model, random_batch, run_cli

from seqserve.model import train as training
from seqserve.model.checkpoint import load_checkpoint
from seqserve.model.config import TrainConfig
from seqserve.model.data import load_split, pad_batch, random_stretch, stratified_split
from seqserve.model.train import augment_features, build_parser, mixup_loss, sequence_loss


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "jv_lstm_stream"
    proc = run_cli(
        "-m", "model.train", "--preset", "jv_lstm_stream", "--epochs", "1", "--hidden-size", "16",
        "--layers", "1", "--out", str(out), "--no-progress",
    )
    return proc, out


def test_train_smoke_run_writes_everything(smoke_run):
    proc, out = smoke_run
    assert proc.returncode == 0, proc.stderr
    written = {p.name for p in out.iterdir()}
    assert {"checkpoint.pt", "learning_curves.png", "metrics.csv", "summary.json"} <= written
    assert not [n for n in written if n.endswith(".tmp")]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert int(rows[0]["epoch"]) == 1
    assert 0.0 <= float(rows[0]["val_acc"]) <= 1.0 and float(rows[0]["train_loss"]) > 0
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1
    assert summary["dataset"] == "JapaneseVowels"


def test_train_smoke_checkpoint_loads(smoke_run):
    proc, out = smoke_run
    assert proc.returncode == 0, proc.stderr
    # plain data only: loadable with weights_only=True (what load_checkpoint uses)
    payload = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert payload["format"] == "seqserve.checkpoint/1"
    model, extra = load_checkpoint(out / "checkpoint.pt")
    cfg = model.config
    assert (cfg.cell, cfg.hidden_size, cfg.num_layers, cfg.bidirectional) == ("lstm", 16, 1, False)
    assert cfg.step_logits and cfg.attention == "none"
    assert cfg.input_size == 12 and cfg.num_classes == 9 and len(cfg.class_labels) == 9
    assert len(cfg.feature_mean) == 12 and len(cfg.feature_std) == 12
    assert extra["epoch"] == 1
    assert extra["metrics"]["test_accuracy"] == json.loads((out / "summary.json").read_text())["test_accuracy"]
    # the checkpoint's model runs on the real data
    test = load_split("test")
    x, lengths = pad_batch(test.sequences[:8])
    with torch.no_grad():
        out_ = model(x, lengths)
    assert out_.logits.shape == (8, 9) and torch.isfinite(out_.logits).all()


def test_train_rejects_unknown_cell():
    proc = run_cli("-m", "model.train", "--cell", "foo", "--out", "/nonexistent/never-written")
    assert proc.returncode == 2
    assert "--cell" in proc.stderr and "invalid choice" in proc.stderr and "'foo'" in proc.stderr


def test_train_requires_out():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--preset", "jv_lstm_stream"])
    assert info.value.code == 2


def test_sequence_loss_ignores_padded_steps():
    model = make_model(cell="lstm", layers=1, bidirectional=False, attention="none", step_logits=True)
    x, lengths = random_batch(model, [5, 2, 3], time=5)
    targets = torch.tensor([0, 3, 1])
    out = model(x, lengths)
    loss = sequence_loss(out, lengths, targets)
    # garbage in the padded step logits must not change the loss
    pad = (torch.arange(5).unsqueeze(0) >= lengths.unsqueeze(1)).unsqueeze(-1)
    out.step_logits = out.step_logits + 100.0 * pad
    torch.testing.assert_close(sequence_loss(out, lengths, targets), loss)
    # and the final prediction's cross-entropy is part of it
    assert loss > torch.nn.functional.cross_entropy(out.logits, targets)


def test_data_split_and_padding():
    train = load_split("train")
    assert train.num_features == 12 and len(train.class_labels) == 9
    tr, val = stratified_split(train.targets, 0.15, seed=0)
    assert not set(tr) & set(val) and len(tr) + len(val) == len(train)
    assert set(train.targets[val].tolist()) == set(range(9))  # every class in validation
    x, lengths = pad_batch([train.sequences[i] for i in (0, 1, 2)])
    assert x.shape == (3, int(lengths.max()), 12) and lengths.dtype == torch.int64
    for i, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(x[i, n:]) == 0


def test_random_stretch_resamples_time_between_neighbouring_frames():
    steps = np.cumsum(np.ones((20, 3), dtype=np.float32), axis=0)  # (20, 3), rising 1..20
    generator = torch.Generator().manual_seed(0)
    lengths = set()
    for _ in range(50):
        out = random_stretch(steps, 0.3, generator)
        lengths.add(len(out))
        assert 14 <= len(out) <= 26 and out.shape[1] == 3
        np.testing.assert_array_equal(out[[0, -1]], steps[[0, -1]])  # same start and end
        assert np.all(np.diff(out[:, 0]) > 0)  # still in order
    assert len(lengths) > 5
    np.testing.assert_array_equal(random_stretch(steps, 0.0, generator), steps)


def test_feature_mask_blanks_whole_features_to_their_mean():
    model = make_model(cell="gru", bidirectional=True)
    x, _ = random_batch(model, [7] * 64)
    generator = torch.Generator().manual_seed(0)
    masked = augment_features(x, model, TrainConfig(input_noise=0.0, feature_mask=0.3), generator)
    blank = (masked == model.feature_mean).all(dim=1)  # (B, F): the feature is its mean at every step
    assert 0.2 < blank.float().mean() < 0.4
    np.testing.assert_array_equal(masked[~blank.unsqueeze(1).expand_as(x)], x[~blank.unsqueeze(1).expand_as(x)])
    untouched = augment_features(x, model, TrainConfig(input_noise=0.0, feature_mask=0.0), generator)
    assert torch.equal(untouched, x)


def test_mixup_blends_summaries_and_losses(monkeypatch):
    model = make_model(cell="lstm", bidirectional=True)  # eval mode: the head's dropout is off
    x, lengths = random_batch(model, [5, 9, 3, 7])
    targets = torch.tensor([0, 1, 2, 3])
    out = model(x, lengths)
    torch.testing.assert_close(model.classify(model.summary(out)), out.logits)
    generator = torch.Generator().manual_seed(0)
    monkeypatch.setattr(training, "sample_beta", lambda *_: 1.0)  # all weight on the sequence itself
    plain = torch.nn.functional.cross_entropy(out.logits, targets, label_smoothing=0.1)
    torch.testing.assert_close(mixup_loss(model, out, targets, TrainConfig(mixup=0.4), generator), plain)
    monkeypatch.setattr(training, "sample_beta", lambda *_: 0.5)
    same = torch.zeros(4, dtype=torch.long)  # one class: the blended loss is the loss of the blend
    replay = torch.Generator().set_state(generator.get_state())
    half = mixup_loss(model, out, same, TrainConfig(mixup=0.4, label_smoothing=0.0), generator)
    partner = torch.randperm(4, generator=replay)
    blended_logits = 0.5 * out.logits + 0.5 * out.logits[partner]  # the head is affine
    torch.testing.assert_close(half, torch.nn.functional.cross_entropy(blended_logits, same))


def test_sweep_trains_every_variant_and_seed_then_resumes(tmp_path):
    out = tmp_path / "sweep"
    variants = ["--variant", "small=--epochs 1 --hidden-size 8", "offset=--epochs 1 --hidden-size 8 --offset-noise 0.2"]
    argv = ["-m", "model.sweep", "--preset", "jv_lstm_stream", *variants, "--seeds", "0", "1", "--out", str(out),
            "--parity"]
    proc = run_cli(*argv)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("offset", 0), ("offset", 1), ("small", 0), ("small", 1)]
    assert all(0.0 < r["test_accuracy"] <= 1.0 for r in rows)
    assert all(r["parity_passed"] and 0.0 < r["parity_max_abs_error"] < 1e-4 and r["input_rounding_effect"] > 0.0
               for r in rows)
    summary = (out / "summary.md").read_text()
    assert "| offset | `--epochs 1 --hidden-size 8 --offset-noise 0.2` |" in summary
    assert "| small | 1 | " in summary  # the per-seed parity table
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = run_cli(*argv)  # everything is in results.jsonl already: nothing retrains
    assert again.returncode == 0, again.stderr
    assert (out / "results.jsonl").read_text().count("\n") == 4


def test_sweep_rejects_bad_train_options(tmp_path):
    proc = run_cli("-m", "model.sweep", "--preset", "jv_lstm_stream", "--variant", "x=--no-such-flag 1",
                   "--out", str(tmp_path / "sweep"))
    assert proc.returncode == 2 and "bad train options '--no-such-flag 1'" in proc.stderr
    assert not (tmp_path / "sweep" / "results.jsonl").exists()


def test_train_help_names_the_real_presets_and_command():
    from seqserve.model.zoo import PRESETS

    out = subprocess.run([sys.executable, "-m", "model.train", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: python -m model.train")
    named = set(re.findall(r"--preset (\w+)", out.stdout))  # every example in the help text
    assert named <= set(PRESETS), named - set(PRESETS)
    assert all(name in out.stdout for name in PRESETS)
