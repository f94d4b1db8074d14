"""metadata.json, defined once: export.py writes it through `ModelMetadata`, the repository reads it back
through the same class.

Every section is a frozen dataclass; its annotations are the schema. `ModelMetadata.from_json`
checks a parsed file against them — types (an integer may stand for a number, a boolean for neither;
no null anywhere; numbers finite, integers within int64), required and unknown fields, the values a
`Literal` allows, and the bounds or pattern a field declares in its `metadata` — and raises
MetadataError naming the field: `architecture.hidden_size: expected an integer, got null`.
`to_json` is its inverse (an absent optional section stays absent), so a valid file round-trips.

    format, name, version, description      "seqserve.model/1"; the name and version it was published as
    architecture                            the encoder's config less labels and normalisation; its `task`
                                            is "classify" (absent: files from before regression) or "regress"
    streaming, precision                    takes an initial state; "fp32" or "int8"
    inputs, outputs                         the I/O contract seqserve.contract derives from the architecture
    class_labels                            classify: one label per class (absent for a regressor)
    targets                                 regress: one name per target, and units if the user gave them
    feature_names                           optional: one name per input feature
    normalisation                           feature mean and std (or none); a regressor's target mean and std
    parameters, training, train_config      size; the trainer's metrics and data set; its settings (free-form)
    parity (fp32) | quantization (int8)     how the file was judged: parity gate, or test accuracy
    onnx_sha256, checkpoint_sha256, opset, versions
    accuracy_over_seeds                     optional: written by model.build_repository

This module needs neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from functools import cache, cached_property, reduce
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from seqserve.contract import (
    INT32_MAX,
    OMIT_DEFAULT,
    SIZE,
    Architecture,
    Task,
    TensorSpec,
    input_specs,
    output_specs,
)

METADATA_FORMAT = "seqserve.model/1"
Precision = Literal["fp32", "int8"]
FP32, INT8 = get_args(Precision)  # the model as exported, or its dynamically quantized variant
INT64_MAX = 2**63 - 1

# Model names, for folders and the `name` fields; versions are positive (0 asks for the latest).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
MODEL_NAME = re.compile(NAME_PATTERN)
NAME = {"pattern": MODEL_NAME, "means": f"a model name ({NAME_PATTERN})"}
VERSION = {"min": 1, "max": INT64_MAX}
SHA256 = {"pattern": re.compile(r"[0-9a-f]{64}"), "means": "a sha256: 64 lowercase hex digits"}
COUNT = {"min": 0, "max": INT64_MAX}
COUNT32 = {"min": 0, "max": INT32_MAX}  # ParitySummary.cases is int32 on the wire
FRACTION = {"min": 0, "max": 1}
NON_NEGATIVE = {"min": 0, "max": math.inf}

JsonScalar = str | int | float | bool


class MetadataError(ValueError):
    """A metadata.json value breaks the schema; the message starts with the field's path."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.field = where


# ---------------------------------------------------------------- the sections


@dataclass(frozen=True, kw_only=True)
class ArchitectureBlock(Architecture):
    """metadata "architecture": the contract's fields, and the rest of the config, recorded."""

    dropout: float | None = field(default=None, metadata=FRACTION)
    attention_size: int | None = field(default=None, metadata=SIZE)
    attention_query: bool | None = None
    conv_channels: int | None = field(default=None, metadata=SIZE)  # input_stage "conv" only
    conv_kernel: int | None = field(default=None, metadata=SIZE)  # input_stage "conv" only

    @property
    def contract(self) -> Architecture:
        return Architecture(**{f.name: getattr(self, f.name) for f in fields(Architecture)})


@dataclass(frozen=True, kw_only=True)
class Normalisation:
    feature_mean: tuple[float, ...]  # (F,) or () for none
    feature_std: tuple[float, ...]  # (F,) or ()
    target_mean: tuple[float, ...] = field(default=(), metadata=OMIT_DEFAULT)  # regress: (K,) or ()
    target_std: tuple[float, ...] = field(default=(), metadata=OMIT_DEFAULT)  # regress: (K,) or ()


@dataclass(frozen=True, kw_only=True)
class Targets:
    """What a regressor predicts: a name per target, in `prediction` order; units only if the user gave them."""

    names: tuple[str, ...]  # (K,)
    units: tuple[str, ...] = field(default=(), metadata=OMIT_DEFAULT)  # (K,) or ()


@dataclass(frozen=True, kw_only=True)
class Training:
    """The trainer's metrics (model/train.py) and the data set's name; a test checkpoint may carry only some.
    Classifiers are scored by accuracy, regressors by RMSE in the targets' units."""

    dataset: str | None = None
    seed: int | None = None
    best_epoch: int | None = field(default=None, metadata=COUNT)
    epochs_run: int | None = field(default=None, metadata=COUNT)
    val_loss: float | None = None
    val_accuracy: float | None = field(default=None, metadata=FRACTION)
    test_accuracy: float | None = field(default=None, metadata=FRACTION)
    val_rmse: float | None = field(default=None, metadata=NON_NEGATIVE)
    test_rmse: float | None = field(default=None, metadata=NON_NEGATIVE)
    train_sequences: int | None = field(default=None, metadata=COUNT)
    val_sequences: int | None = field(default=None, metadata=COUNT)
    test_sequences: int | None = field(default=None, metadata=COUNT)


@dataclass(frozen=True, kw_only=True)
class ParitySummary:
    """The parity report's maxima (parity.json holds it whole)."""

    passed: bool
    atol: float
    rtol: float
    max_abs_error: float
    max_abs_error_per_output: Mapping[str, float]
    max_abs_vs_reference: float | None = None  # absent from reports made before the numpy reference
    max_abs_vs_torch32: float
    max_tolerance_used: float
    cases: int = field(metadata=COUNT32)


@dataclass(frozen=True, kw_only=True)
class QuantizationSource:
    name: str = field(metadata=NAME)
    version: int = field(metadata=VERSION)
    onnx_sha256: str = field(metadata=SHA256)


@dataclass(frozen=True, kw_only=True)
class Quantization:
    """How an int8 variant was made and judged (export.py --int8)."""

    scheme: str
    source: QuantizationSource
    test_split: str
    test_sequences: int = field(metadata=COUNT)
    fp32_test_accuracy: float = field(metadata=FRACTION)
    int8_test_accuracy: float = field(metadata=FRACTION)
    accuracy_drop: float
    max_accuracy_drop: float
    max_abs_logits_difference_vs_fp32: float
    recurrent_layers_quantized: bool
    ops: Mapping[str, int]  # op type -> node count in the int8 graph
    onnxruntime: str


@dataclass(frozen=True, kw_only=True)
class AccuracyOverSeeds:
    seeds: tuple[int, ...]
    test_accuracy: tuple[float, ...]  # one per seed
    mean: float
    std: float


SECTION_OF = {FP32: "parity", INT8: "quantization"}  # the section that judges each precision


@dataclass(frozen=True, kw_only=True)
class ModelMetadata(Mapping[str, Any]):
    """One version's metadata.json. Also a read-only mapping of its JSON form, for code that reads by key."""

    format: str = METADATA_FORMAT
    name: str = field(metadata=NAME)
    version: int = field(metadata=VERSION)
    description: str
    architecture: ArchitectureBlock
    streaming: bool
    precision: Precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    class_labels: tuple[str, ...] = field(default=(), metadata=OMIT_DEFAULT)  # (C,) classify; absent for regress
    targets: Targets | None = None  # regress only
    feature_names: tuple[str, ...] = field(default=(), metadata=OMIT_DEFAULT)  # (F,) or ()
    normalisation: Normalisation
    parameters: int = field(metadata=COUNT)
    training: Training
    train_config: Mapping[str, JsonScalar]
    parity: ParitySummary | None = None
    onnx_sha256: str = field(metadata=SHA256)
    checkpoint_sha256: str = field(metadata=SHA256)
    opset: int = field(metadata=SIZE)
    versions: Mapping[str, str]  # package -> version that produced the file
    quantization: Quantization | None = None
    accuracy_over_seeds: AccuracyOverSeeds | None = None

    @classmethod
    def from_json(cls, data: Any) -> ModelMetadata:
        """Check a parsed metadata.json; raises MetadataError naming the first wrong field."""
        if not isinstance(data, dict):
            raise MetadataError("", f"expected a JSON object, got {describe(data)}")
        if data.get("format") != METADATA_FORMAT:
            raise MetadataError("format", f"expected {METADATA_FORMAT!r}, got {describe(data.get('format'))}")
        metadata = decode(cls, data, "")
        metadata.check()
        return metadata

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    def dumps(self) -> str:
        """The file's text; raises MetadataError unless that text reads back through `from_json`."""
        text = json.dumps(self.to_json(), indent=2) + "\n"
        ModelMetadata.from_json(json.loads(text))
        return text

    def check(self) -> None:
        """The rules between fields; the types were checked on decoding."""
        arch = self.architecture.contract
        if self.streaming != arch.streaming:
            raise MetadataError("streaming", f"is {json.dumps(self.streaming)}, but the architecture is "
                                             + ("unidirectional" if arch.streaming else "bidirectional"))
        self.check_task(arch)
        if arch.input_stage == "none" and (arch.conv_stride != 1 or self.architecture.conv_kernel is not None
                                           or self.architecture.conv_channels is not None):
            raise MetadataError("architecture.input_stage", "is 'none', but conv_stride, conv_kernel or "
                                                            "conv_channels is set")
        if len(self.feature_names) not in (0, arch.input_size):
            raise MetadataError("feature_names", f"{len(self.feature_names)} names for input_size {arch.input_size}")
        for name, size, size_name in (("feature_mean", arch.input_size, "input_size"),
                                      ("feature_std", arch.input_size, "input_size"),
                                      ("target_mean", arch.num_targets, "num_targets"),
                                      ("target_std", arch.num_targets, "num_targets")):
            count = len(getattr(self.normalisation, name))
            if count not in (0, size):
                raise MetadataError(f"normalisation.{name}", f"{count} values for {size_name} {size}")
        for name, specs in (("inputs", input_specs(arch)), ("outputs", output_specs(arch))):
            if list(getattr(self, name)) != specs:
                names = [s.name for s in specs]
                raise MetadataError(name, f"not the I/O contract of this architecture (expected {names}, "
                                          "with the shapes and dtypes seqserve.contract gives)")
        for precision, section in SECTION_OF.items():
            present = getattr(self, section) is not None
            if precision == self.precision and not present:
                raise MetadataError(section, f"missing field (a {precision} model needs it)")
            if precision != self.precision and present:
                raise MetadataError(section, f"unexpected for precision {self.precision!r}")

    def check_task(self, arch: Architecture) -> None:
        """A classifier has classes and labels and no targets; a regressor the other way round."""
        count, other = ("num_classes", "num_targets") if arch.task == "classify" else ("num_targets", "num_classes")
        if getattr(arch, count) < 1:
            raise MetadataError(f"architecture.{count}", f"a {arch.task} model needs at least 1, got 0")
        if getattr(arch, other) != 0:
            raise MetadataError(f"architecture.{other}", f"must be 0 for a {arch.task} model, "
                                                         f"got {getattr(arch, other)}")
        if len(self.class_labels) != arch.num_classes:
            raise MetadataError("class_labels", f"{len(self.class_labels)} labels for num_classes {arch.num_classes}")
        if (self.targets is None) != (arch.task == "classify"):
            raise MetadataError("targets", "missing field (a regress model needs it)" if self.targets is None
                                else "unexpected for a classify model")
        if self.targets is not None:
            if len(self.targets.names) != arch.num_targets:
                raise MetadataError("targets.names", f"{len(self.targets.names)} names for num_targets "
                                                     f"{arch.num_targets}")
            if len(self.targets.units) not in (0, arch.num_targets):
                raise MetadataError("targets.units", f"{len(self.targets.units)} units for num_targets "
                                                     f"{arch.num_targets}")

    @property
    def task(self) -> Task:
        return self.architecture.task

    @property
    def test_accuracy(self) -> float | None:
        """This model file's own test accuracy: measured after quantization for int8, else from training."""
        if self.quantization is not None:
            return self.quantization.int8_test_accuracy
        return self.training.test_accuracy

    # -- the read-only mapping of the JSON form

    @cached_property
    def _json(self) -> dict[str, Any]:
        return self.to_json()

    def __getitem__(self, key: str) -> Any:
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)


# ---------------------------------------------------------------- JSON <-> dataclasses, by annotation


JSON_CONSTANTS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # what Python's json reads them from


def describe(value: Any) -> str:
    """A JSON value, as an error message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        text = JSON_CONSTANTS.get(repr(value), repr(value))
        return f"the number {text if len(text) <= 24 else text[:20] + '…'}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("…" if len(value) > 40 else "")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def expected(tp: Any) -> str:
    """What a type accepts, as an error message says it."""
    if is_dataclass(tp) or get_origin(tp) is Mapping:
        return "an object"
    if get_origin(tp) is tuple:
        return "a list"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, UnionType):
        return " or ".join(expected(a) for a in get_args(tp))
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[tp]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -INT64_MAX - 1 <= value <= INT64_MAX


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_text(value: Any) -> bool:
    """A string protobuf can send: UTF-8, so no unpaired surrogate (JSON allows "\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


SCALARS = {bool: lambda v: isinstance(v, bool), int: _is_int, float: _is_number, str: _is_text}


def join(where: str, name: str | int) -> str:
    return f"{where}[{name}]" if isinstance(name, int) else f"{where}.{name}" if where else name


@cache
def _fields(cls: type) -> tuple[tuple[Field, Any], ...]:
    """Each field of a dataclass with its resolved annotation (`X | None` read as X: null is never valid)."""
    hints = get_type_hints(cls)
    return tuple((f, _without_none(hints[f.name])) for f in fields(cls))


def _without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, UnionType) and NoneType in get_args(tp):
        rest = tuple(a for a in get_args(tp) if a is not NoneType)
        return reduce(operator.or_, rest)
    return tp


def decode(tp: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as a `tp`, or MetadataError at `where` (the field's path)."""
    if isinstance(tp, type) and is_dataclass(tp):
        return _decode_dataclass(tp, value, where)
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple and isinstance(value, list):  # tuple[X, ...]
        return tuple(decode(args[0], v, join(where, i)) for i, v in enumerate(value))
    if origin is Mapping and isinstance(value, dict):  # Mapping[str, X]
        return {k: decode(args[1], v, join(where, k)) for k, v in value.items()}
    if origin is Literal and isinstance(value, str) and value in args:
        return value
    if origin in (Union, UnionType) and any(SCALARS[a](value) for a in args):  # unions here are of scalars
        return value
    if tp in SCALARS and SCALARS[tp](value):
        return value
    raise MetadataError(where, _near_miss(tp, value) or f"expected {expected(tp)}, got {describe(value)}")


def _near_miss(tp: Any, value: Any) -> str | None:
    """The message for a value of the right JSON kind that is still not valid."""
    if tp in (int, float) and isinstance(value, int) and not isinstance(value, bool):
        return f"expected {expected(tp)} within int64, got {describe(value)}"
    if tp is str and isinstance(value, str):
        return "expected UTF-8 text, got a string with an unpaired surrogate"
    return None


def _decode_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise MetadataError(where, f"expected an object, got {describe(value)}")
    declared = _fields(cls)
    unknown = sorted(set(value) - {f.name for f, _ in declared})
    if unknown:
        raise MetadataError(join(where, unknown[0]), "unknown field")
    kwargs = {}
    for f, tp in declared:
        path = join(where, f.name)
        if f.name in value:
            kwargs[f.name] = _check_limits(decode(tp, value[f.name], path), f.metadata, path)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise MetadataError(path, "missing field")
    return cls(**kwargs)


def _check_limits(value: Any, limits: Mapping[str, Any], where: str) -> Any:
    """A field's declared bounds ({"min", "max"}) or pattern ({"pattern", "means"})."""
    if "min" in limits and not limits["min"] <= value <= limits["max"]:
        raise MetadataError(where, f"expected a value from {limits['min']} to {limits['max']}, got {value!r}")
    if "pattern" in limits and not limits["pattern"].fullmatch(value):
        raise MetadataError(where, f"expected {limits['means']}, got {describe(value)}")
    return value


def encode(value: Any) -> Any:
    """The JSON form of a decoded value; absent (None) optional fields are left out, and so are fields
    marked `omit_default` at their default (fields added after files were written without them)."""
    if is_dataclass(value):
        return {f.name: encode(v) for f in fields(value) if not _left_out(f, v := getattr(value, f.name))}
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: encode(v) for k, v in value.items()}
    return value


def _left_out(f: Field, value: Any) -> bool:
    return value is None or (f.metadata.get("omit_default", False) and value == f.default)
