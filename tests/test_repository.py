"""The model repository: every committed version verifies and is reproducible from its checkpoint;
seqserve.repository reads good versions and reports broken ones."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELS, ROOT, ort_run, random_batch, random_state, run_cli, torch_outputs, write_checkpoint

from seqserve.contract import input_specs, output_specs
from seqserve.model import export
from seqserve.model.checkpoint import load_checkpoint
from seqserve.model.onnx_export import export_onnx, graph_problems
from seqserve.model.parity import make_session
from seqserve.repository import (
    RepositoryError,
    iter_version_dirs,
    latest_version,
    read_version,
    scan_repository,
)

REPOSITORY = ROOT / "model_repository"
LONG = 64


def _committed_versions() -> list[Path]:
    return list(iter_version_dirs(REPOSITORY)) if REPOSITORY.is_dir() else []


COMMITTED = _committed_versions()


def verify_published_version(folder: Path, tmp_path: Path) -> None:
    """Everything a published version must satisfy; used on the committed repository and on a tmp one."""
    version = read_version(folder)  # verifies model.onnx against onnx_sha256
    meta = version.metadata
    assert hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest() == meta["onnx_sha256"]
    checkpoint = folder / "checkpoint.pt"
    assert checkpoint.is_file(), f"{folder}: no checkpoint.pt"
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == meta["checkpoint_sha256"]
    assert (version.name, version.version) == (meta["name"], meta["version"])

    assert meta["parity"]["passed"] is True
    assert json.loads((folder / "parity.json").read_text())["passed"] is True
    arch = version.architecture
    assert len(meta["class_labels"]) == arch.num_classes
    assert meta["inputs"] == [s.to_dict() for s in input_specs(arch)]
    assert meta["outputs"] == [s.to_dict() for s in output_specs(arch)]

    # The committed checkpoint rebuilds the committed model: same architecture, same graph checks,
    # and a fresh export gives bit-identical onnxruntime outputs.
    model, _ = load_checkpoint(checkpoint)
    assert model.config.architecture == arch
    assert list(model.config.class_labels) == meta["class_labels"]
    assert graph_problems(folder / "model.onnx", model) == []
    fresh = tmp_path / "reexport.onnx"
    export_onnx(model, fresh)
    committed_session, fresh_session = make_session(folder / "model.onnx"), make_session(fresh)
    lengths = [9, 1, 14, 5]
    x, lengths_t = random_batch(model, lengths, time=14, seed=31)
    args = [x, lengths_t]
    if arch.streaming:
        args += list(random_state(model, len(lengths), seed=2))
    np_args = [None if a is None else a.numpy() for a in args]
    committed = ort_run(committed_session, model, *np_args)
    reexported = ort_run(fresh_session, model, *np_args)
    ref = torch_outputs(model, *args)
    assert set(committed) == set(reexported) == set(ref)
    for name in committed:
        assert np.array_equal(committed[name], reexported[name]), f"{name}: committed != re-exported"
        np.testing.assert_allclose(committed[name], ref[name], atol=1e-5, rtol=1e-4, err_msg=name)


# ---------------------------------------------------------------- committed repository


@pytest.mark.parametrize(
    "folder",
    COMMITTED or [None],
    ids=[f"{p.parent.name}/{p.name}" for p in COMMITTED] or ["no-models"],
)
def test_committed_version(folder, tmp_path):
    if folder is None:
        pytest.fail(f"{REPOSITORY} holds no model versions: publish the default models with export.py")
    verify_published_version(folder, tmp_path)


def test_committed_repository_scans_clean():
    assert COMMITTED, f"{REPOSITORY} holds no model versions"
    good, problems = scan_repository(REPOSITORY)
    assert problems == []
    assert [(v.name, v.version) for v in good] == [(p.parent.name, int(p.name)) for p in COMMITTED]
    assert not list(REPOSITORY.glob(".staging-*")), "leftover staging folders in model_repository/"


# ---------------------------------------------------------------- the same checks on a tmp repository


@pytest.fixture(scope="module")
def tmp_repository(tiny_checkpoint, tiny_stream_checkpoint, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    export.publish(tiny_checkpoint, root, "tiny_bilstm", 1, long_length=LONG)
    export.publish(tiny_stream_checkpoint, root, "tiny_gru_stream", 1, long_length=LONG)
    export.publish(tiny_stream_checkpoint, root, "tiny_gru_stream", 2, long_length=LONG)
    return root


@pytest.mark.parametrize("name", ["tiny_bilstm/1", "tiny_gru_stream/2"])
def test_published_version_verifies(tmp_repository, tmp_path, name):
    verify_published_version(tmp_repository / name, tmp_path)
    assert read_version(tmp_repository / name).class_labels == list(LABELS)


def test_reexport_check_catches_a_different_model(tmp_repository, tmp_path):
    """The re-export comparison is sharp: a version whose checkpoint is not its model's fails it."""
    folder = tmp_path / "swapped" / "tiny_bilstm" / "1"
    shutil.copytree(tmp_repository / "tiny_bilstm" / "1", folder)
    # same architecture, different weights: a stand-in for a stale checkpoint
    write_checkpoint(folder / "checkpoint.pt", seed=99, cell="lstm", layers=1, bidirectional=True,
                     attention="additive")
    meta = json.loads((folder / "metadata.json").read_text())
    meta["checkpoint_sha256"] = hashlib.sha256((folder / "checkpoint.pt").read_bytes()).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(AssertionError, match="committed != re-exported"):
        verify_published_version(folder, tmp_path)


def test_latest_version(tmp_repository):
    assert latest_version(tmp_repository, "tiny_gru_stream").version == 2
    with pytest.raises(RepositoryError, match="nope"):
        latest_version(tmp_repository, "nope")


# ---------------------------------------------------------------- broken versions are reported, not raised


def _broken_repository(tmp_repository: Path, root: Path) -> dict[str, Path]:
    good = tmp_repository / "tiny_bilstm" / "1"
    folders = {}
    for name in ("good", "bad_sha", "no_metadata", "bad_json", "no_model", "bad_format", "bad_architecture"):
        folders[name] = root / name / "1"
        shutil.copytree(good, folders[name])
    with (folders["bad_sha"] / "model.onnx").open("ab") as f:
        f.write(b"\0")
    (folders["no_metadata"] / "metadata.json").unlink()
    (folders["bad_json"] / "metadata.json").write_text('{"format": "seqserve.model/1", ')
    (folders["no_model"] / "model.onnx").unlink()
    meta = json.loads((good / "metadata.json").read_text())
    (folders["bad_format"] / "metadata.json").write_text(json.dumps({**meta, "format": "other/9"}))
    arch = {k: v for k, v in meta["architecture"].items() if k != "hidden_size"}
    (folders["bad_architecture"] / "metadata.json").write_text(json.dumps({**meta, "architecture": arch}))
    (root / "not_a_version").mkdir()  # skipped and named: no version folder
    (root / "good" / "latest").mkdir()  # skipped and named: not a version number
    (root / ".staging-abc" / "1").mkdir(parents=True)  # passed over: hidden (export.py stages here)
    (root / "README.md").write_text("plain files beside the models are passed over\n")
    return folders


def test_scan_repository_reports_broken_versions(tmp_repository, tmp_path):
    root = tmp_path / "repo"
    folders = _broken_repository(tmp_repository, root)
    good, problems = scan_repository(root)
    assert [(v.name, v.version) for v in good] == [("good", 1)]
    assert len(problems) == 8, problems
    expected = {
        "bad_sha/1/model.onnx": "does not match metadata onnx_sha256",
        "no_metadata/1": "missing metadata.json",
        "bad_json/1/metadata.json": "not valid JSON",
        "no_model/1": "missing model.onnx",
        "bad_format/1/metadata.json": "format: expected 'seqserve.model/1', got the string 'other/9'",
        "bad_architecture/1/metadata.json": "architecture.hidden_size: missing field",
        "not_a_version": "no version folders; skipped",
        "good/latest": "not a version number",
    }
    for where, text in expected.items():
        matching = [p for p in problems if p.startswith(f"{root / where}: ")]
        assert len(matching) == 1, (where, problems)
        assert text in matching[0], (where, matching[0])
    # without hash verification the tampered model reads (the other problems remain)
    good, problems = scan_repository(root, verify_hash=False)
    assert sorted(v.name for v in good) == ["bad_sha", "good"] and len(problems) == 7
    assert not any("/bad_sha/" in p for p in problems)
    assert set(folders) == {where.split("/")[0] for where in expected} - {"not_a_version"}


def test_read_version_raises_naming_the_problem(tmp_repository, tmp_path):
    root = tmp_path / "repo"
    folders = _broken_repository(tmp_repository, root)
    with pytest.raises(RepositoryError, match=r"sha256 .* does not match"):
        read_version(folders["bad_sha"])
    with pytest.raises(RepositoryError, match="missing metadata.json"):
        read_version(folders["no_metadata"])


def test_scan_repository_of_a_missing_folder_raises(tmp_path):
    with pytest.raises(RepositoryError, match="not a folder"):
        scan_repository(tmp_path / "nowhere")


@pytest.mark.parametrize("content", ["[]", "null", '"text"'])
def test_scan_repository_reports_non_object_metadata(tmp_repository, tmp_path, content):
    root = tmp_path / "repo"
    shutil.copytree(tmp_repository / "tiny_bilstm" / "1", root / "good" / "1")
    shutil.copytree(tmp_repository / "tiny_bilstm" / "1", root / "odd" / "1")
    (root / "odd" / "1" / "metadata.json").write_text(content)
    good, problems = scan_repository(root)
    assert [v.name for v in good] == ["good"]
    assert len(problems) == 1 and "odd" in problems[0]


def test_scan_repository_reports_non_string_sha(tmp_repository, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(tmp_repository / "tiny_bilstm" / "1", root / "odd" / "1")
    meta = json.loads((root / "odd" / "1" / "metadata.json").read_text())
    (root / "odd" / "1" / "metadata.json").write_text(json.dumps({**meta, "onnx_sha256": 12345}))
    good, problems = scan_repository(root)
    assert good == [] and len(problems) == 1 and "onnx_sha256" in problems[0]


def test_read_version_rejects_an_int8_model_without_its_accuracy(tmp_repository, tmp_path):
    folder = tmp_path / "repo" / "odd_int8" / "1"
    shutil.copytree(tmp_repository / "tiny_bilstm" / "1", folder)
    meta = json.loads((folder / "metadata.json").read_text())
    int8 = {k: v for k, v in meta.items() if k != "parity"} | {"precision": "int8"}
    quantization = {
        "scheme": "dynamic", "source": {"name": "tiny_bilstm", "version": 1, "onnx_sha256": meta["onnx_sha256"]},
        "test_split": "test", "test_sequences": 4, "fp32_test_accuracy": 0.5, "int8_test_accuracy": 0.5,
        "accuracy_drop": 0.0, "max_accuracy_drop": 0.01, "max_abs_logits_difference_vs_fp32": 0.1,
        "recurrent_layers_quantized": True, "ops": {"DynamicQuantizeLSTM": 1}, "onnxruntime": "1",
    }
    (folder / "metadata.json").write_text(json.dumps(int8 | {"quantization": quantization}))
    assert read_version(folder).test_accuracy == 0.5
    cases = {
        "quantization: missing field": int8,
        "quantization: expected an object, got null": int8 | {"quantization": None},
        "quantization.int8_test_accuracy: expected a finite number, got the string 'high'":
            int8 | {"quantization": quantization | {"int8_test_accuracy": "high"}},
    }
    for message, content in cases.items():
        (folder / "metadata.json").write_text(json.dumps(content))
        with pytest.raises(RepositoryError, match=f"{folder / 'metadata.json'}: {re.escape(message)}"):
            read_version(folder)


# ---------------------------------------------------------------- the rebuild command
def test_build_repository_trains_publishes_and_reports(tmp_path):
    """`python -m model.build_repository` end to end on one preset and seed, with its int8 variant."""
    runs, repository = tmp_path / "runs", tmp_path / "repo"
    proc = run_cli("-m", "model.build_repository", "--models", "jv_lstm_stream", "--seeds", "0", "--int8",
                   "--runs", str(runs), "--repository", str(repository), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    verify_published_version(repository / "jv_lstm_stream" / "1", tmp_path)
    summary = json.loads((runs / "jv_lstm_stream" / "seed0" / "summary.json").read_text())
    meta = read_version(repository / "jv_lstm_stream" / "1").metadata
    assert meta["accuracy_over_seeds"]["test_accuracy"] == [summary["test_accuracy"]]
    assert meta["training"]["test_accuracy"] == summary["test_accuracy"] > 0.9
    assert (repository / "jv_lstm_stream" / "1" / "learning_curves.png").is_file()
    int8 = read_version(repository / "jv_lstm_stream_int8" / "1")
    assert int8.precision == "int8" and int8.metadata["quantization"]["fp32_test_accuracy"] == summary["test_accuracy"]
    assert json.loads((runs / "accuracy.json").read_text())["jv_lstm_stream"]["mean"] == summary["test_accuracy"]
    assert "| jv_lstm_stream | " in proc.stdout
