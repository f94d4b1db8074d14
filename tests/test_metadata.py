"""seqserve.metadata: the one definition of metadata.json. The committed files load unchanged, what
export.py builds validates, and every wrong value is named by its field."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT

from seqserve.metadata import FP32, INT8, MetadataError, ModelMetadata
from seqserve.model import export
from seqserve.model.checkpoint import load_checkpoint
from seqserve.model.errors import SeqserveModelError
from seqserve.model.parity import OutputError, ParityReport
from seqserve.model.quantize import Int8Comparison
from seqserve.repository import CHECKPOINT_FILE, METADATA_FILE, MODEL_FILE, ModelVersion, write_metadata

COMMITTED = sorted((ROOT / "model_repository").glob("*/1/metadata.json"))


def committed_json(name: str = "jv_bigru_attn") -> dict:
    return json.loads((ROOT / "model_repository" / name / "1" / "metadata.json").read_text())


@pytest.mark.parametrize("path", COMMITTED, ids=[p.parent.parent.name for p in COMMITTED])
def test_committed_metadata_round_trips(path):
    data = json.loads(path.read_text())
    metadata = ModelMetadata.from_json(data)
    assert metadata.to_json() == data  # nothing added, dropped or changed
    assert dict(metadata) == data  # the mapping view is the JSON
    assert ModelMetadata.from_json(json.loads(metadata.dumps())) == metadata
    assert metadata.precision == FP32 and metadata.parity is not None and metadata.quantization is None
    assert metadata.test_accuracy == data["training"]["test_accuracy"]
    assert metadata.architecture.contract.hidden_size == data["architecture"]["hidden_size"]


def _set(path: str, value: object) -> Callable[[dict], None]:
    """An edit setting the field at dotted `path` (list items as numbers) to `value`; DELETE removes it."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]

    def edit(data: dict) -> None:
        for key in parents:
            data = data[key]
        if value is DELETE:
            del data[last]
        else:
            data[last] = value

    return edit


DELETE = object()
BAD_FIELDS = {  # edit of jv_bigru_attn's metadata -> the message
    "null hidden_size": (_set("architecture.hidden_size", None),
                         "architecture.hidden_size: expected an integer, got null"),
    "string hidden_size": (_set("architecture.hidden_size", "64"),
                           "architecture.hidden_size: expected an integer, got the string '64'"),
    "float num_layers": (_set("architecture.num_layers", 2.0),
                         "architecture.num_layers: expected an integer, got the number 2.0"),
    "bool num_classes": (_set("architecture.num_classes", True),
                         "architecture.num_classes: expected an integer, got true"),
    "hidden_size past int32": (_set("architecture.hidden_size", 2**31),
                               "architecture.hidden_size: expected a value from 1 to 2147483647, got 2147483648"),
    "zero input_size": (_set("architecture.input_size", 0),
                        "architecture.input_size: expected a value from 1 to 2147483647, got 0"),
    "unknown cell": (_set("architecture.cell", "transformer"),
                     "architecture.cell: expected one of 'rnn', 'lstm', 'gru', got the string 'transformer'"),
    "unknown attention": (_set("architecture.attention", "dot"),
                          "architecture.attention: expected one of 'additive', 'none', got the string 'dot'"),
    "null parity number": (_set("parity.max_abs_error", None),
                           "parity.max_abs_error: expected a finite number, got null"),
    "string parity number": (_set("parity.atol", "1e-5"),
                             "parity.atol: expected a finite number, got the string '1e-5'"),
    "NaN parity number": (_set("parity.rtol", float("nan")),
                          "parity.rtol: expected a finite number, got the number NaN"),
    "string cases": (_set("parity.cases", "8"), "parity.cases: expected an integer, got the string '8'"),
    "per-output null": (_set("parity.max_abs_error_per_output.h_n", None),
                        "parity.max_abs_error_per_output.h_n: expected a finite number, got null"),
    "null test accuracy": (_set("training.test_accuracy", None),
                           "training.test_accuracy: expected a finite number, got null"),
    "accuracy above 1": (_set("training.test_accuracy", 98.1),
                         "training.test_accuracy: expected a value from 0 to 1, got 98.1"),
    "string version": (_set("version", "1"), "version: expected an integer, got the string '1'"),
    "version past int64": (_set("version", 2**63), "version: expected an integer within int64, got the number 9223"),
    "version zero": (_set("version", 0), "version: expected a value from 1 to 9223372036854775807, got 0"),
    "bad name": (_set("name", "jv bigru"), "name: expected a model name ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})"),
    "null description": (_set("description", None), "description: expected a string, got null"),
    "surrogate label": (_set("class_labels.0", "\ud800"),
                        "class_labels[0]: expected UTF-8 text, got a string with an unpaired surrogate"),
    "label count": (_set("class_labels", ["1", "2"]), "class_labels: 2 labels for num_classes 9"),
    "null shape dim": (_set("inputs.0.shape.2", None), "inputs[0].shape[2]: expected an integer or a string, got null"),
    "wrong contract": (_set("inputs.0.shape.2", 13), "inputs: not the I/O contract of this architecture"),
    "unknown dtype": (_set("outputs.0.dtype", "float16"),
                      "outputs[0].dtype: expected one of 'float32', 'int64', got the string 'float16'"),
    "short sha": (_set("onnx_sha256", "994b"), "onnx_sha256: expected a sha256: 64 lowercase hex digits"),
    "streaming disagrees": (_set("streaming", True), "streaming: is true, but the architecture is bidirectional"),
    "normalisation length": (_set("normalisation.feature_std", [1.0]),
                             "normalisation.feature_std: 1 values for input_size 12"),
    "unknown field": (_set("colour", "blue"), "colour: unknown field"),
    "unknown nested field": (_set("parity.colour", "blue"), "parity.colour: unknown field"),
    "missing field": (_set("description", DELETE), "description: missing field"),
    "missing labels": (_set("class_labels", DELETE), "class_labels: 0 labels for num_classes 9"),
    "missing nested field": (_set("architecture.hidden_size", DELETE), "architecture.hidden_size: missing field"),
    "missing parity": (_set("parity", DELETE), "parity: missing field (a fp32 model needs it)"),
    "int8 with parity": (_set("precision", INT8), "parity: unexpected for precision 'int8'"),
    "list for object": (_set("training", []), "training: expected an object, got a list"),
    "other format": (_set("format", "seqserve.model/2"),
                     "format: expected 'seqserve.model/1', got the string 'seqserve.model/2'"),
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_every_wrong_value_is_named_by_its_field(case):
    edit, message = BAD_FIELDS[case]
    data = committed_json()
    edit(data)
    with pytest.raises(MetadataError) as caught:
        ModelMetadata.from_json(data)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("content", [[], None, "text", 3])
def test_metadata_must_be_an_object(content):
    with pytest.raises(MetadataError, match="expected a JSON object"):
        ModelMetadata.from_json(content)


def test_optional_sections_stay_absent():
    data = committed_json()
    del data["accuracy_over_seeds"]
    assert "max_abs_vs_reference" not in data["parity"]  # committed before the numpy reference
    metadata = ModelMetadata.from_json(data)
    assert metadata.accuracy_over_seeds is None and metadata.parity.max_abs_vs_reference is None
    assert metadata.to_json() == data


# ---------------------------------------------------------------- export builds through the schema


@pytest.fixture()
def built(tiny_checkpoint, tmp_path) -> tuple[ModelMetadata, Path]:
    """build_metadata on the tiny checkpoint, with a stand-in parity report and model file."""
    model, extra = load_checkpoint(tiny_checkpoint)
    (tmp_path / MODEL_FILE).write_bytes(b"onnx")
    (tmp_path / CHECKPOINT_FILE).write_bytes(tiny_checkpoint.read_bytes())
    report = ParityReport(cases=["a", "b"], outputs={name: OutputError(max_abs=1e-6, max_abs_vs_reference=2e-6)
                                                     for name in ("outputs", "h_n", "c_n", "context", "attention",
                                                                  "logits")})
    return export.build_metadata("tiny", 3, "a tiny model", model, extra, report, tmp_path), tmp_path


def test_export_metadata_round_trips_through_the_schema(built):
    metadata, _ = built
    text = metadata.dumps()
    assert ModelMetadata.from_json(json.loads(text)) == metadata
    assert json.loads(text)["parity"]["cases"] == 2 and metadata.training.test_accuracy == 0.25


def test_export_int8_metadata_round_trips_through_the_schema(built):
    metadata, folder = built
    source = ModelVersion("tiny", 3, folder, metadata)
    comparison = Int8Comparison(sequences=10, fp32_accuracy=0.5, int8_accuracy=0.4, max_abs_logits_difference=0.2)
    int8 = export.build_int8_metadata(source, "tiny_int8", {"DynamicQuantizeLSTM": 2}, comparison, 0.2, folder)
    again = ModelMetadata.from_json(json.loads(int8.dumps()))
    assert again == int8 and again.precision == INT8 and again.parity is None
    assert again.test_accuracy == 0.4 and again.quantization.source.onnx_sha256 == metadata.onnx_sha256
    shared = {k: v for k, v in metadata.to_json().items() if k not in ("name", "description", "precision", "parity",
                                                                        "onnx_sha256")}
    assert {k: again[k] for k in shared} == shared


def test_metadata_that_would_not_validate_is_not_written(built, tmp_path):
    metadata, _ = built
    for bad, message in ((dataclasses.replace(metadata, name="a b"), "name: expected a model name"),
                         (dataclasses.replace(metadata, parity=None), "parity: missing field")):
        with pytest.raises(MetadataError, match=message):
            write_metadata(tmp_path, bad)
    assert not (tmp_path / METADATA_FILE).exists()


def test_publish_reports_a_bad_name_and_writes_nothing(tiny_checkpoint, tmp_path):
    with pytest.raises(SeqserveModelError, match="name: expected a model name"):
        export.publish(tiny_checkpoint, tmp_path / "repo", "not ok", 1, long_length=16)
    assert not (tmp_path / "repo" / "not ok").exists()
