"""Export, parity gate, numpy reference and metadata of regressors and of models with a conv input stage;
publishing with the caller's data set, names and test split; picking the next version."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import CELLS, ROOT, make_config, ort_run, random_batch
from tiny_models import TARGET_MEAN, TARGET_STD, conv_config, model_of, regressor_config

from seqserve.contract import FRAMES, frame_lengths, output_names
from seqserve.metadata import MetadataError, ModelMetadata
from seqserve.model import export
from seqserve.model.checkpoint import save_checkpoint
from seqserve.model.data import SequenceDataset
from seqserve.model.encoder import RecurrentEncoder
from seqserve.model.errors import SeqserveModelError
from seqserve.model.evaluate import rmse
from seqserve.model.onnx_export import export_onnx, graph_problems
from seqserve.model.parity import check_parity, make_session
from seqserve.model.reference import ReferenceEncoder
from seqserve.repository import METADATA_FILE, read_version

LONG = 40  # longest sequence of the parity grid here: small models, short runs
def exported(model: RecurrentEncoder, folder: Path) -> Path:
    path = folder / "model.onnx"
    export_onnx(model, path)
    return path


VARIANTS = {
    "regress-lstm": regressor_config(cell="lstm"),
    "regress-gru-uni": regressor_config(cell="gru", bidirectional=False, attention="none", num_targets=1,
                                        target_mean=(5.0,), target_std=(2.0,)),
    "conv-gru-2layer": conv_config(cell="gru", layers=2),
    "conv-rnn-uni": conv_config(cell="rnn", bidirectional=False, attention="none"),
    "conv-lstm-regress": conv_config(cell="lstm", task="regress", num_targets=2, class_labels=(),
                                     target_mean=TARGET_MEAN, target_std=TARGET_STD, conv_kernel=4, conv_stride=4),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_graph_and_parity_gate_pass(variant, tmp_path):
    """Graph checks (native recurrent nodes with sequence_lens, one Conv with an input stage, symbolic
    dims) and the parity grid against float32 / float64 PyTorch and the numpy reference."""
    model = model_of(VARIANTS[variant])
    path = exported(model, tmp_path)
    assert graph_problems(path, model) == []
    report = check_parity(model, path, long_length=LONG)
    assert report.passed, report.summary()
    assert report.worst("reference_vs_torch64") < 1e-12  # the numpy reference is the same exact answer
    head = "prediction" if model.config.task == "regress" else "logits"
    assert head in report.outputs and ("logits" in report.outputs) == (head == "logits")
    if model.config.input_stage == "conv":
        assert "stride_edges" in report.cases


@pytest.mark.parametrize("cell", CELLS)
def test_conv_stage_onnx_rows_equal_rows_alone(cell, tmp_path):
    """Unsorted lengths, length 1, lengths not divisible by the stride, a batch longer than at export:
    onnxruntime's padded batch equals each row run alone at its exact length, frames mapped by ceil."""
    model = model_of(conv_config(cell=cell, layers=2, conv_kernel=4, conv_stride=3))
    session = make_session(exported(model, tmp_path))
    lengths = [17, 1, 8, 3, 12, 5, 2]
    x, lengths_t = random_batch(model, lengths, time=19)
    out = ort_run(session, model, x, lengths_t)
    frames = frame_lengths(model.config.architecture, np.array(lengths))
    assert frames.tolist() == [math.ceil(n / 3) for n in lengths]
    assert out["outputs"].shape[1] == math.ceil(19 / 3)
    for b, n in enumerate(lengths):
        alone = ort_run(session, model, x[b : b + 1, :n], lengths_t[b : b + 1])
        m = int(frames[b])
        np.testing.assert_allclose(out["outputs"][b, :m], alone["outputs"][0], atol=1e-6, rtol=1e-5)
        assert not out["outputs"][b, m:].any() and not out["attention"][b, m:].any()
        np.testing.assert_allclose(out["logits"][b], alone["logits"][0], atol=1e-6, rtol=1e-5)


def test_conv_graph_declares_a_frames_axis(tmp_path):
    model = model_of(conv_config())
    graph = onnx.load(str(exported(model, tmp_path))).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.output}
    assert dims["outputs"][:2] == ["batch", FRAMES] and dims["attention"] == ["batch", FRAMES]


def test_reference_regressor_scales_back_to_target_units():
    model = model_of(regressor_config()).double()
    x, lengths = random_batch(model, [6, 1, 4])
    ref = ReferenceEncoder.from_encoder(model)(x.numpy(), lengths.numpy())
    assert "logits" not in ref and sorted(ref) == sorted(output_names(model.config.architecture))
    with torch.no_grad():
        z = model.head_output(model.summary(model(x, lengths))).numpy()  # (B, K) standardised
    np.testing.assert_allclose(ref["prediction"], z * np.array(TARGET_STD) + np.array(TARGET_MEAN), rtol=1e-12)


# ---------------------------------------------------------------- publishing


def regress_split(model: RecurrentEncoder, n: int = 12, seed: int = 3) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    F = model.config.input_size
    sequences = [rng.standard_normal((int(t), F)).astype(np.float32) for t in rng.integers(1, 20, n)]
    targets = (np.array(TARGET_MEAN) + rng.standard_normal((n, 2))).astype(np.float32)  # (N, K)
    return SequenceDataset(sequences, targets, (), "MyRegression")


def classify_split(model: RecurrentEncoder, n: int = 12, seed: int = 4) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    sequences = [rng.standard_normal((int(t), model.config.input_size)).astype(np.float32)
                 for t in rng.integers(1, 20, n)]
    return SequenceDataset(sequences, rng.integers(0, 4, n), model.config.class_labels, "MyClasses")


@pytest.fixture()
def regress_checkpoint(tmp_path) -> tuple[Path, RecurrentEncoder]:
    model = model_of(conv_config(task="regress", num_targets=2, class_labels=(), target_mean=TARGET_MEAN,
                                 target_std=TARGET_STD))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, {"metrics": {"dataset": "trainer's name", "val_rmse": 1.5, "test_rmse": 9.0}})
    return path, model


def test_publish_regressor_records_task_targets_and_its_own_test_rmse(regress_checkpoint, tmp_path):
    checkpoint, model = regress_checkpoint
    test = regress_split(model)
    data = export.DataDescription(dataset="MyRegression", feature_names=tuple("abcde"),
                                  target_names=("speed", "load"), target_units=("m/s", ""))
    repository = tmp_path / "repo"
    export.publish(checkpoint, repository, "reg", 1, long_length=LONG, data=data, test=test)
    folder = repository / "reg" / "1"
    raw = json.loads((folder / METADATA_FILE).read_text())
    assert raw["architecture"]["task"] == "regress" and raw["architecture"]["num_targets"] == 2
    assert raw["architecture"]["input_stage"] == "conv" and raw["architecture"]["conv_stride"] == 3
    assert "class_labels" not in raw and raw["targets"] == {"names": ["speed", "load"], "units": ["m/s", ""]}
    assert raw["normalisation"]["target_std"] == list(TARGET_STD) and raw["feature_names"] == list("abcde")
    assert [o["name"] for o in raw["outputs"]][-1] == "prediction"
    metadata = ModelMetadata.from_json(raw)
    assert metadata.task == "regress" and metadata.to_json() == raw
    training = metadata.training
    assert training.dataset == "MyRegression" and training.val_rmse == 1.5 and training.test_sequences == len(test)
    # the published file's own RMSE on the split, not the trainer's 9.0
    session = make_session(folder / "model.onnx")
    predictions = [ort_run(session, model, s[None], [len(s)])["prediction"][0] for s in test.sequences]
    assert training.test_rmse == pytest.approx(rmse(np.array(predictions), test.targets), rel=1e-6)
    assert read_version(folder).metadata == metadata


def test_publish_regressor_defaults_target_names(regress_checkpoint, tmp_path):
    checkpoint, _ = regress_checkpoint
    export.publish(checkpoint, tmp_path / "repo", "reg", 1, long_length=LONG)
    metadata = read_version(tmp_path / "repo" / "reg" / "1").metadata
    assert metadata.targets.names == ("target_0", "target_1") and metadata.targets.units == ()
    assert metadata.training.dataset == "trainer's name" and metadata.training.test_rmse == 9.0


def test_publish_classifier_scores_the_callers_test_split(tmp_path):
    model = model_of(make_config())
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, model, {"metrics": {"test_accuracy": 0.99}})
    test = classify_split(model)
    export.publish(checkpoint, tmp_path / "repo", "cls", 1, long_length=LONG, data=export.DataDescription("MyClasses"),
                   test=test)
    metadata = read_version(tmp_path / "repo" / "cls" / "1").metadata
    logits = np.concatenate([model(torch.from_numpy(s)[None], torch.tensor([len(s)])).logits.detach().numpy()
                             for s in test.sequences])
    assert metadata.training.test_accuracy == pytest.approx(float((logits.argmax(1) == test.targets).mean()))
    assert metadata.training.dataset == "MyClasses" and metadata.targets is None and metadata.task == "classify"


@pytest.mark.parametrize("wrong", ["features", "task", "classes"])
def test_publish_refuses_a_test_split_that_cannot_score_the_model(wrong, tmp_path):
    model = model_of(make_config())
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, model)
    test = classify_split(model)
    if wrong == "features":
        test = SequenceDataset([s[:, :3] for s in test.sequences], test.targets, test.class_labels, "Other")
    elif wrong == "task":
        test = SequenceDataset(test.sequences, np.zeros((len(test), 1), np.float32), (), "Other")
    else:
        test = SequenceDataset(test.sequences, test.targets, ("w", "x", "y", "z"), "Other")
    with pytest.raises(SeqserveModelError, match=r"^test split: Other "):
        export.publish(checkpoint, tmp_path / "repo", "cls", 1, long_length=LONG, test=test)
    assert not (tmp_path / "repo" / "cls").exists()


def test_next_version(tmp_path):
    repository = tmp_path / "repo"
    assert export.next_version(repository, "m") == 1
    for folder in ("1", "7", "03", "latest", ".staging-x"):
        (repository / "m" / folder).mkdir(parents=True)
    assert export.next_version(repository, "m") == 8
    assert export.next_version(repository, "other") == 1


# ---------------------------------------------------------------- metadata of a regressor


@pytest.fixture()
def regress_json(regress_checkpoint, tmp_path) -> dict:
    checkpoint, _ = regress_checkpoint
    export.publish(checkpoint, tmp_path / "repo", "reg", 1, long_length=LONG)
    return json.loads((tmp_path / "repo" / "reg" / "1" / METADATA_FILE).read_text())


def _edit(data: dict, path: str, value: object) -> dict:
    *parents, last = path.split(".")
    for key in parents:
        data = data[key]
    if value is None:
        del data[last]
    else:
        data[last] = value


REGRESS_BAD = {
    "no targets": ("targets", None, "targets: missing field (a regress model needs it)"),
    "target names": ("targets.names", ["a"], "targets.names: 1 names for num_targets 2"),
    "target units": ("targets.units", ["m"], "targets.units: 1 units for num_targets 2"),
    "class labels": ("class_labels", ["a"], "class_labels: 1 labels for num_classes 0"),
    "classes": ("architecture.num_classes", 3, "architecture.num_classes: must be 0 for a regress model"),
    "no target count": ("architecture.num_targets", 0, "architecture.num_targets: a regress model needs at least 1"),
    "unknown task": ("architecture.task", "forecast", "architecture.task: expected one of 'classify', 'regress'"),
    "unknown stage": ("architecture.input_stage", "fft", "architecture.input_stage: expected one of 'none', 'conv'"),
    "zero stride": ("architecture.conv_stride", 0, "architecture.conv_stride: expected a value from 1"),
    "target std": ("normalisation.target_std", [1.0], "normalisation.target_std: 1 values for num_targets 2"),
    "negative rmse": ("training.test_rmse", -1.0, "training.test_rmse: expected a value from 0"),
    "contract": ("architecture.conv_stride", 2, "outputs: not the I/O contract of this architecture"),
    "feature names": ("feature_names", ["a"], "feature_names: 1 names for input_size 5"),
    "stride without stage": ("architecture.input_stage", "none",
                             "architecture.input_stage: is 'none', but conv_stride, conv_kernel or conv_channels"),
}


@pytest.mark.parametrize("case", REGRESS_BAD)
def test_every_wrong_regressor_value_is_named_by_its_field(case, regress_json):
    path, value, message = REGRESS_BAD[case]
    _edit(regress_json, path, value)
    with pytest.raises(MetadataError) as caught:
        ModelMetadata.from_json(regress_json)
    assert str(caught.value).startswith(message), str(caught.value)


def test_targets_on_a_classifier_are_refused(regress_json):
    data = json.loads((ROOT / "model_repository" / "jv_bigru_attn" / "1" / METADATA_FILE).read_text())
    data["targets"] = regress_json["targets"]
    with pytest.raises(MetadataError, match=r"^targets: unexpected for a classify model"):
        ModelMetadata.from_json(data)


def test_int8_refuses_a_regressor(regress_checkpoint, tmp_path):
    checkpoint, model = regress_checkpoint
    export.publish(checkpoint, tmp_path / "repo", "reg", 1, long_length=LONG)
    with pytest.raises(SeqserveModelError, match=r"^int8: only classifiers have an int8 variant"):
        export.publish_int8(read_version(tmp_path / "repo" / "reg" / "1"), tmp_path / "repo", test=regress_split(model))
    assert not (tmp_path / "repo" / "reg_int8").exists()


def test_int8_of_a_conv_classifier_is_judged_on_the_callers_split(tmp_path):
    model = model_of(conv_config(conv_kernel=4, conv_stride=2))
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, model)
    repository, test = tmp_path / "repo", classify_split(model, n=20)
    export.publish(checkpoint, repository, "cls", 1, long_length=LONG)
    comparison = export.publish_int8(read_version(repository / "cls" / "1"), repository, max_drop=1.0, test=test)
    quantization = read_version(repository / "cls_int8" / "1").metadata.quantization
    assert quantization.test_split == "MyClasses test" and quantization.test_sequences == 20
    assert quantization.ops.get("ConvInteger") == 1 and quantization.recurrent_layers_quantized
    assert quantization.int8_test_accuracy == comparison.int8_accuracy
