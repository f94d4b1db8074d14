"""The model repository on disk: `<root>/<model>/<version>/model.onnx` + `metadata.json`.

metadata.json (written by export.py) holds the architecture, the I/O contract, class labels,
training metrics, the parity report's summary, the sha256 of model.onnx and the versions of
torch / onnx / onnxruntime that produced it. An int8 variant (`<model>_int8`, precision "int8")
has no parity summary but a `quantization` section with its own measured test accuracy; its
`training` section is the float32 checkpoint's. This module reads and verifies it; it never
needs torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqserve.contract import Architecture, TensorSpec, input_specs, output_specs

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"
CHECKPOINT_FILE = "checkpoint.pt"
METADATA_FORMAT = "seqserve.model/1"
FP32, INT8 = "fp32", "int8"  # metadata "precision": the model as exported, or its dynamically quantized variant


class RepositoryError(Exception):
    """A model version on disk is incomplete, corrupt or breaks the I/O contract."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path  # the version folder
    metadata: dict[str, Any] = field(repr=False)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def architecture(self) -> Architecture:
        return Architecture.from_mapping(self.metadata["architecture"])

    @property
    def class_labels(self) -> list[str]:
        return list(self.metadata.get("class_labels", []))

    @property
    def precision(self) -> str:
        return self.metadata.get("precision", FP32)

    @property
    def test_accuracy(self) -> float | None:
        """This model file's own test accuracy: measured after quantization for int8, else from training."""
        if self.precision == INT8:
            return self.metadata["quantization"]["int8_test_accuracy"]
        return self.metadata.get("training", {}).get("test_accuracy")

    @property
    def inputs(self) -> list[TensorSpec]:
        return input_specs(self.architecture)

    @property
    def outputs(self) -> list[TensorSpec]:
        return output_specs(self.architecture)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _has_int8_accuracy(metadata: dict[str, Any]) -> bool:
    quantization = metadata.get("quantization")
    value = quantization.get("int8_test_accuracy") if isinstance(quantization, dict) else None
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_version(path: Path, verify_hash: bool = True) -> ModelVersion:
    """Read one version folder; raises RepositoryError naming what is wrong."""
    meta_path, model_path = path / METADATA_FILE, path / MODEL_FILE
    if not model_path.is_file():
        raise RepositoryError(f"{path}: missing {MODEL_FILE}")
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing {METADATA_FILE}") from None
    except json.JSONDecodeError as exc:
        raise RepositoryError(f"{meta_path}: not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise RepositoryError(f"{meta_path}: must hold a JSON object, got {type(metadata).__name__}")
    if metadata.get("format") != METADATA_FORMAT:
        raise RepositoryError(f"{meta_path}: format is {metadata.get('format')!r}, expected {METADATA_FORMAT!r}")
    for key in ("name", "version", "architecture", "onnx_sha256"):
        if key not in metadata:
            raise RepositoryError(f"{meta_path}: missing field {key!r}")
    try:
        Architecture.from_mapping(metadata["architecture"])
    except TypeError as exc:
        raise RepositoryError(f"{meta_path}: architecture: {exc}") from None
    if not isinstance(metadata["onnx_sha256"], str):
        raise RepositoryError(f"{meta_path}: onnx_sha256 must be a hex string")
    if metadata.get("precision", FP32) == INT8 and not _has_int8_accuracy(metadata):
        raise RepositoryError(f"{meta_path}: an int8 model needs a number in quantization.int8_test_accuracy")
    if verify_hash:
        actual = sha256_of(model_path)
        if actual != metadata["onnx_sha256"]:
            raise RepositoryError(
                f"{model_path}: sha256 {actual[:12]}… does not match metadata onnx_sha256 "
                f"{metadata['onnx_sha256'][:12]}…"
            )
    return ModelVersion(name=path.parent.name, version=int(path.name), path=path, metadata=metadata)


def iter_version_dirs(root: Path) -> Iterator[Path]:
    """Every `<root>/<model>/<version>` folder whose version is an integer, in name/version order."""
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        yield from sorted(versions, key=lambda p: int(p.name))


def scan_repository(root: str | Path, verify_hash: bool = True) -> tuple[list[ModelVersion], list[str]]:
    """Read every model version under `root`: (the good ones, one message per broken one)."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    good, problems = [], []
    for path in iter_version_dirs(root):
        try:
            good.append(read_version(path, verify_hash))
        except RepositoryError as exc:
            problems.append(str(exc))
    return good, problems


def latest_version(root: str | Path, name: str) -> ModelVersion:
    versions = [int(p.name) for p in (Path(root) / name).glob("*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise RepositoryError(f"model {name!r}: no versions under {root}")
    return read_version(Path(root) / name / str(max(versions)))
