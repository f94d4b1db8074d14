"""The model repository on disk: `<root>/<model>/<version>/model.onnx` + `metadata.json`.

metadata.json is defined once, in seqserve.metadata (export.py writes it through the same class):
the architecture, the I/O contract, class labels, training metrics, the parity summary (fp32) or
the quantization report (int8), the sha256 of model.onnx and the versions that produced it. This
module finds the version folders, reads and verifies each; it never needs torch.

What is read: model folders named like a model (`[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`) holding version
folders named by a positive int64 in ASCII digits, without sign, spaces or leading zeros (`1`, not
`01` or `١`). A folder or file that is a symlink may point anywhere inside the repository (an alias)
but not out of it. Every other folder is named in the problems, as is every broken version; hidden
entries (`.staging-*` from export.py, `.git`) and plain files beside the folders are passed over.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from seqserve.contract import Architecture, TensorSpec, input_specs, output_specs
from seqserve.metadata import (
    INT64_MAX,
    MODEL_NAME,
    NAME_PATTERN,
    MetadataError,
    ModelMetadata,
    ParitySummary,
)

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"
CHECKPOINT_FILE = "checkpoint.pt"
VERSION_NAME = re.compile(r"[1-9][0-9]{0,18}")  # at most 19 digits, as 2^63-1; [0-9] is ASCII only (\d is not)


class RepositoryError(Exception):
    """A model version on disk is incomplete, corrupt or breaks the I/O contract."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path  # the version folder
    metadata: ModelMetadata = field(repr=False)  # typed; also a read-only mapping of the JSON

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def architecture(self) -> Architecture:
        return self.metadata.architecture.contract

    @property
    def description(self) -> str:
        return self.metadata.description

    @property
    def class_labels(self) -> list[str]:
        return list(self.metadata.class_labels)

    @property
    def precision(self) -> str:
        return self.metadata.precision

    @property
    def parity(self) -> ParitySummary | None:
        """The parity gate's summary; None for an int8 model (judged on test accuracy instead)."""
        return self.metadata.parity

    @property
    def test_accuracy(self) -> float | None:
        """This model file's own test accuracy: measured after quantization for int8, else from training."""
        return self.metadata.test_accuracy

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


def version_number(name: str) -> int | None:
    """The version a folder name stands for (ASCII digits, no sign or leading zero, 1 to 2^63-1), else None."""
    if not VERSION_NAME.fullmatch(name) or int(name) > INT64_MAX:
        return None
    return int(name)


def read_metadata(path: Path) -> ModelMetadata:
    """Parse and check one metadata.json; RepositoryError names the file and the field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepositoryError(f"{path.parent}: missing {METADATA_FILE}") from None
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, an int over 4300 digits
        raise RepositoryError(f"{path}: not valid JSON: {exc}") from None
    try:
        return ModelMetadata.from_json(data)
    except MetadataError as exc:
        raise RepositoryError(f"{path}: {exc}") from None


def write_metadata(folder: Path, metadata: ModelMetadata) -> None:
    """Write `folder`/metadata.json; raises MetadataError (writing nothing) unless it would read back."""
    text = metadata.dumps()
    (folder / METADATA_FILE).write_text(text, encoding="utf-8")


def read_version(path: Path, verify_hash: bool = True, root: Path | None = None) -> ModelVersion:
    """Read one version folder; raises RepositoryError naming what is wrong.

    With `root` (the repository), model.onnx and metadata.json must not be symlinks out of it.
    """
    meta_path, model_path = path / METADATA_FILE, path / MODEL_FILE
    number = version_number(path.name)
    if number is None:
        raise RepositoryError(f"{path}: {_NOT_A_VERSION}")
    if root is not None:
        for file in (meta_path, model_path):
            if (problem := _leaves(file, root.resolve())) is not None:
                raise RepositoryError(f"{file}: {problem}")
    if not model_path.is_file():
        raise RepositoryError(f"{path}: missing {MODEL_FILE}")
    metadata = read_metadata(meta_path)
    if verify_hash:
        _verify_sha256(model_path, metadata.onnx_sha256)
    return ModelVersion(name=path.parent.name, version=number, path=path, metadata=metadata)


def _verify_sha256(model_path: Path, expected: str) -> None:
    try:
        actual = sha256_of(model_path)
    except OSError as exc:
        raise RepositoryError(f"{model_path}: cannot read it: {exc.strerror or exc}") from None
    if actual != expected:
        raise RepositoryError(
            f"{model_path}: sha256 {actual[:12]}… does not match metadata onnx_sha256 {expected[:12]}…"
        )


# ---------------------------------------------------------------- finding the version folders

_NOT_A_MODEL = f"not a model name ({NAME_PATTERN})"
_NOT_A_VERSION = "not a version number (ASCII digits without sign, spaces or leading zeros; 1 to 2^63-1)"


def _leaves(path: Path, real_root: Path) -> str | None:
    """Why `path` may not be followed: a symlink out of the repository, or to nothing (None: it may)."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if not target.is_relative_to(real_root):
        return f"a symlink to {target}, outside the repository"
    if not target.exists():
        return f"a symlink to {target}, which does not exist"
    return None


def _folders(folder: Path) -> list[Path]:
    """The entries of `folder` that are (or link to) folders, or are broken links, less hidden ones, by name."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and (p.is_dir() or p.is_symlink() and not p.exists()))


def _skip_reason(entry: Path, real_root: Path, valid_name: bool, rule: str) -> str | None:
    """Why a folder is not read: a link out of the repository or to nothing, or a name against `rule`."""
    return _leaves(entry, real_root) or (None if valid_name else rule)


def _skipped(path: Path, why: str) -> str:
    return f"{path}: {why}; skipped"


def _model_versions(model_dir: Path, real_root: Path) -> tuple[list[Path], list[str]]:
    """One model folder's readable version folders, by number, and why each other one is skipped."""
    try:
        entries = _folders(model_dir)
    except OSError as exc:
        return [], [_skipped(model_dir, f"cannot list it: {exc.strerror or exc}")]
    versions, skipped = [], []
    for entry in entries:
        why = _skip_reason(entry, real_root, version_number(entry.name) is not None, _NOT_A_VERSION)
        if why:
            skipped.append(_skipped(entry, why))
        else:
            versions.append(entry)
    if not versions and not skipped:
        skipped.append(_skipped(model_dir, "no version folders"))
    return sorted(versions, key=lambda p: int(p.name)), skipped


def walk_repository(root: Path) -> tuple[list[Path], list[str]]:
    """Every version folder under `root` that may be read, in name/version order, and why each other
    folder is skipped."""
    real_root = root.resolve()
    versions, skipped = [], []
    for model_dir in _folders(root):
        why = _skip_reason(model_dir, real_root, MODEL_NAME.fullmatch(model_dir.name) is not None, _NOT_A_MODEL)
        if why:
            skipped.append(_skipped(model_dir, why))
            continue
        found, problems = _model_versions(model_dir, real_root)
        versions += found
        skipped += problems
    return versions, skipped


def iter_version_dirs(root: Path) -> Iterator[Path]:
    """Every `<root>/<model>/<version>` folder that may be read, in name/version order."""
    yield from walk_repository(Path(root))[0]


def scan_repository(root: str | Path, verify_hash: bool = True) -> tuple[list[ModelVersion], list[str]]:
    """Read every model version under `root`: (the good ones, one message per broken version or skipped folder)."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    folders, problems = walk_repository(root)
    good = []
    for path in folders:
        try:
            good.append(read_version(path, verify_hash, root))
        except RepositoryError as exc:
            problems.append(str(exc))
    return good, problems


def latest_version(root: str | Path, name: str) -> ModelVersion:
    folder = Path(root) / name
    versions = [n for p in folder.iterdir() if (n := version_number(p.name)) and p.is_dir()] if folder.is_dir() else []
    if not versions:
        raise RepositoryError(f"model {name!r}: no versions under {root}")
    return read_version(folder / str(max(versions)))
