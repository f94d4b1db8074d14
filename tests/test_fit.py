"""`python -m model.fit`: a labelled file in, a published version out, served and answered like onnxruntime.

Fits are tiny (a few epochs, 8 hidden units): these tests check the command's contract, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_cli, staging_leftovers
from servers import threaded_server

from seqserve.client import SeqserveClient
from seqserve.datasets import japanese_vowels_dir
from seqserve.model.data import SequenceDataset
from seqserve.model.defaults import MAX_BATCH, MAX_EPOCHS, MAX_FRAMES, MIN_BATCH, TARGET_STEPS, default_configs
from seqserve.repository import read_version
from seqserve.ts_format import load_ts

ARCHIVE = japanese_vowels_dir().parent  # aeon's data folder: one folder per archive data set
TINY = ("--epochs", "2", "--hidden-size", "8", "--no-progress")
RESULT_KEYS = {"name", "version", "task", "train_seconds", "path"}


def archive_file(name: str, split: str) -> Path:
    return ARCHIVE / name / f"{name}_{split.upper()}.ts"


def fit(*args: str) -> tuple[int, dict | None, str]:
    """Run the command; returns (exit status, the last stdout line as JSON if any, stderr)."""
    proc = run_cli("-m", "model.fit", *args)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else None, proc.stderr


@pytest.fixture(scope="module")
def basic_motions(tmp_path_factory) -> tuple[dict, Path, Path]:
    """BasicMotions fitted once: (result line, repository, run folder)."""
    root = tmp_path_factory.mktemp("fit")
    repository, run = root / "repository", root / "run"
    status, result, stderr = fit(str(archive_file("BasicMotions", "train")), "--test",
                                 str(archive_file("BasicMotions", "test")), "--name", "basic_motions",
                                 "--repository", str(repository), "--out", str(run), "--seed", "1", *TINY)
    assert status == 0, stderr
    assert result is not None
    return result, repository, run


def test_fit_prints_the_result_as_its_last_stdout_line(basic_motions):
    result, repository, _ = basic_motions
    assert RESULT_KEYS | {"test_accuracy"} <= set(result)
    assert result["name"] == "basic_motions" and result["version"] == 1 and result["task"] == "classify"
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["train_seconds"] > 0
    assert Path(result["path"]) == repository / "basic_motions" / "1"
    assert "test_rmse" not in result


def test_fit_publishes_a_version_that_knows_its_data(basic_motions):
    result, repository, _ = basic_motions
    version = read_version(Path(result["path"]))
    header, cases = load_ts(archive_file("BasicMotions", "train"))
    assert version.class_labels == sorted({c.label for c in cases})
    assert version.architecture.input_size == cases[0].steps.shape[1] == 6
    assert version.metadata.training.dataset == "BasicMotions_TRAIN"  # the file's stem, not JapaneseVowels
    assert version.metadata.training.test_accuracy == result["test_accuracy"]
    assert version.metadata.training.test_sequences == 40
    assert version.metadata.parity is not None and version.metadata.parity.passed
    assert staging_leftovers(repository) == []


def test_fit_writes_its_report(basic_motions):
    result, _, run = basic_motions
    for picture in ("learning_curves.png", "confusion_matrix.png"):
        assert (run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == result["test_accuracy"]
    counts = np.array(metrics["confusion_matrix"])
    assert counts.shape == (4, 4) and counts.sum() == 40
    assert np.trace(counts) / counts.sum() == pytest.approx(result["test_accuracy"])


def test_a_served_fit_answers_as_onnxruntime_does(basic_motions):
    result, repository, _ = basic_motions
    _, cases = load_ts(archive_file("BasicMotions", "test"))
    sequences = [c.steps for c in cases[:6]]
    model_file = Path(result["path"]) / "model.onnx"
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    x = np.stack(sequences)  # (B, T, F): BasicMotions has equal lengths
    lengths = np.full(len(sequences), x.shape[1], dtype=np.int64)
    [expected] = session.run(["logits"], {"x": x, "lengths": lengths})  # (B, C)
    with threaded_server(repository) as server, SeqserveClient(server.target) as client:
        answers = client.encode("basic_motions", sequences, outputs=["logits"])
    labels = read_version(Path(result["path"])).class_labels
    np.testing.assert_allclose(np.stack([a.logits for a in answers]), expected, rtol=1e-4, atol=1e-5)
    assert [a.label for a in answers] == [labels[i] for i in expected.argmax(axis=1)]


def test_a_regression_fit_publishes_a_model_whose_onnx_answers_score_as_reported(tmp_path):
    """Covid3Month (TSER, one target): the result's test_rmse is the published model.onnx's own RMSE on the
    test file, through onnxruntime directly (the servers' regression results land with the serving side)."""
    repository, run = tmp_path / "repository", tmp_path / "run"
    status, result, stderr = fit(str(archive_file("Covid3Month", "train")), "--test",
                                 str(archive_file("Covid3Month", "test")), "--name", "covid", "--repository",
                                 str(repository), "--out", str(run), *TINY)
    assert status == 0, stderr
    assert result is not None and result["task"] == "regress" and result["version"] == 1
    assert RESULT_KEYS | {"test_rmse"} <= set(result) and "test_accuracy" not in result
    version = read_version(Path(result["path"]))
    assert version.metadata.task == "regress" and version.metadata.training.test_rmse == result["test_rmse"]
    _, cases = load_ts(archive_file("Covid3Month", "test"))
    x = np.stack([c.steps for c in cases])  # (N, 84, 1): equal lengths
    targets = np.array([[float(c.target)] for c in cases], dtype=np.float32)  # (N, 1)
    session = ort.InferenceSession(str(version.model_file), providers=["CPUExecutionProvider"])
    [prediction] = session.run(["prediction"], {"x": x, "lengths": np.full(len(x), x.shape[1], dtype=np.int64)})
    assert prediction.shape == targets.shape
    assert float(np.sqrt(np.mean((prediction - targets) ** 2))) == pytest.approx(result["test_rmse"], rel=1e-4)
    assert (run / "predicted_vs_true.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "metrics.json").read_text())["per_target_test_rmse"]["target"] == pytest.approx(
        result["test_rmse"])


def test_a_second_fit_publishes_the_next_version_and_int8_judged_on_the_hold_out(basic_motions, tmp_path):
    _, repository, _ = basic_motions
    status, result, stderr = fit(str(archive_file("BasicMotions", "train")), "--name", "basic_motions",
                                 "--repository", str(repository), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--hidden-size", "8", "--no-progress", "--int8", "--int8-max-drop", "1")
    assert status == 0, stderr
    assert result is not None and result["version"] == 2
    assert result["test_sequences"] == 8  # the hold-out: 25 % of each class of 10, rounded
    assert read_version(repository / "basic_motions" / "1").version == 1  # untouched
    assert read_version(Path(result["path"])).version == 2
    int8 = read_version(Path(result["int8_path"]))  # judged on the hold-out, not on JapaneseVowels
    assert int8.metadata.quantization is not None
    assert int8.metadata.quantization.test_split == "BasicMotions_TRAIN test"
    assert int8.metadata.quantization.test_sequences == 8
    assert int8.test_accuracy == result["int8_test_accuracy"]


@pytest.mark.parametrize(("sequences", "length", "stage", "stride"), [
    (270, 29, "none", None),  # JapaneseVowels: short series go straight to the recurrent layers
    (40, 100, "conv", 2),  # BasicMotions
    (100, 1460, "conv", 15),  # ACSF1: about 100 frames of the longest series
])
def test_defaults_follow_the_data_size_and_length(sequences, length, stage, stride):
    data = SequenceDataset([np.zeros((length, 3), np.float32)] * sequences, np.arange(sequences) % 2, ("a", "b"))
    config, tc = default_configs(data)
    assert config.input_stage == stage and config.input_size == 3
    if stride is not None:
        assert config.conv_stride == stride and config.conv_kernel >= max(8, stride)
        assert -(-length // stride) <= MAX_FRAMES
    assert MIN_BATCH <= tc.batch_size <= MAX_BATCH and tc.batch_size <= sequences
    steps_per_epoch = -(-round(sequences * (1 - tc.val_fraction)) // tc.batch_size)
    assert tc.epochs * steps_per_epoch >= min(TARGET_STEPS, MAX_EPOCHS * steps_per_epoch)
    assert tc.feature_mask == tc.offset_noise == tc.stretch == 0  # no JapaneseVowels-only augmentation


# ---------------------------------------------------------------- bad data: one line, exit 2, nothing published


def write_ts(path: Path, labels: list[str]) -> Path:
    """A small univariate classification .ts file, one case per label."""
    classes = " ".join(sorted(set(labels)))
    rows = [",".join(f"{v:.3f}" for v in np.sin(np.arange(12) * (i + 1))) + f":{label}"
            for i, label in enumerate(labels)]
    path.write_text(f"@problemName tiny\n@univariate true\n@equalLength true\n@seriesLength 12\n"
                    f"@classLabel true {classes}\n@data\n" + "\n".join(rows) + "\n")
    return path


def assert_refused(tmp_path: Path, *args: str, naming: str) -> None:
    repository = tmp_path / "repository"
    status, result, stderr = fit(*args, "--name", "bad", "--repository", str(repository),
                                 "--out", str(tmp_path / "run"), *TINY)
    assert status == 2, stderr
    assert result is None
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and naming in lines[0], stderr
    assert not (repository / "bad").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_bad_model_name_is_refused_before_training(tmp_path):
    status, result, stderr = fit(str(archive_file("BasicMotions", "train")), "--name", "my model",
                                 "--repository", str(tmp_path / "repository"), *TINY)
    assert status == 2 and result is None
    assert stderr.strip() == "error: --name: 'my model' is not a model name ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
    assert not (tmp_path / "repository").exists()


def test_a_missing_file_is_refused(tmp_path):
    missing = tmp_path / "nowhere_TRAIN.ts"
    assert_refused(tmp_path, str(missing), naming=str(missing))


def test_an_unknown_extension_is_refused(tmp_path):
    odd = tmp_path / "data.xyz"
    odd.write_text("1,2,3\n")
    assert_refused(tmp_path, str(odd), naming=str(odd))


def test_a_single_class_is_refused(tmp_path):
    one = write_ts(tmp_path / "one_TRAIN.ts", ["a"] * 8)
    assert_refused(tmp_path, str(one), naming=str(one))


def test_a_test_label_unseen_in_training_is_refused(tmp_path):
    train = write_ts(tmp_path / "tiny_TRAIN.ts", ["a", "b"] * 4)
    test = write_ts(tmp_path / "tiny_TEST.ts", ["a", "b", "c"])
    assert_refused(tmp_path, str(train), "--test", str(test), naming="'c'")
