"""Export a checkpoint to ONNX, prove parity, and publish it to the model repository.

    python export.py runs/jv_bilstm_attn/checkpoint.pt --name jv_bilstm_attn --version 1
    seqserve-export runs/jv_bilstm_attn/checkpoint.pt --name jv_bilstm_attn --version 1   # installed

Steps: rebuild the model from the checkpoint -> export (native RNN/LSTM/GRU nodes,
`sequence_lens`, symbolic batch/time) -> graph checks -> parity grid against eager PyTorch
(float32 and float64) and the numpy reference of the cell equations -> only if everything passes, write
`<repository>/<name>/<version>/{model.onnx, metadata.json, parity.json, checkpoint.pt}`.
On any failure nothing is written to the repository and the exit status is non-zero.

`publish(...)` takes from its caller (`python -m model.fit`) the data set's name, the feature and target
names, and a test split: the published ONNX file is scored on it (accuracy, or RMSE for a regressor)
and the score is recorded in metadata.json. `next_version` picks the version number a new fit gets.

With --int8, the published model is then dynamically quantized (int8 weights) and both are
run on the JapaneseVowels test split (from Python: any test split); if the accuracy drops by at most
--int8-max-drop, the
variant is written to `<repository>/<name>_int8/<version>/{model.onnx, metadata.json}`,
otherwise nothing more is written and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime
import torch

from seqserve.contract import input_specs, output_specs
from seqserve.metadata import (
    FP32,
    INT8,
    ArchitectureBlock,
    MetadataError,
    ModelMetadata,
    Normalisation,
    ParitySummary,
    Quantization,
    QuantizationSource,
    Targets,
    Training,
    decode,
)
from seqserve.repository import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    PARITY_FILE,
    ModelVersion,
    read_version,
    sha256_of,
    version_number,
    write_metadata,
)

from .checkpoint import load_checkpoint
from .config import CONV_FIELDS, EncoderConfig
from .data import DATASET, SequenceDataset
from .encoder import RecurrentEncoder
from .errors import AccuracyDropError, InputShapeError, ParityError, SeqserveModelError
from .evaluate import Score, fit_problem, score
from .onnx_export import OPSET, check_graph, export_onnx
from .parity import ParityReport, check_parity, make_session
from .quantize import (
    SCHEME,
    Int8Comparison,
    compare_on_test_split,
    int8_name,
    quantize_int8,
    recurrent_layers_quantized,
)

DEFAULT_INT8_MAX_DROP = 0.01  # test accuracy an int8 variant may lose against its float32 model
# config fields metadata.json keeps elsewhere (labels, normalisation)
NOT_ARCHITECTURE = ("class_labels", "feature_mean", "feature_std", "target_mean", "target_std")


@dataclass(frozen=True)
class DataDescription:
    """What the caller knows of the data a model was fitted to, for its metadata.json."""

    dataset: str | None = None  # the data set's name; None: the one the trainer recorded
    feature_names: tuple[str, ...] = ()  # (F,) or ()
    target_names: tuple[str, ...] = ()  # regress: (K,), or () for "target" / "target_0", "target_1", ...
    target_units: tuple[str, ...] = ()  # regress: (K,) or (): left to the user


def architecture_block(cfg: EncoderConfig) -> ArchitectureBlock:
    """The config as metadata records it: less labels and normalisation, and less the input stage's
    settings when there is none."""
    left_out = NOT_ARCHITECTURE + (CONV_FIELDS if cfg.input_stage == "none" else ())
    return decode(ArchitectureBlock, {k: v for k, v in cfg.to_dict().items() if k not in left_out}, "architecture")


def targets_of(cfg: EncoderConfig, data: DataDescription) -> Targets | None:
    """A regressor's target names (the caller's, else numbered) and units; None for a classifier."""
    if cfg.task != "regress":
        return None
    K = cfg.num_targets
    default = ("target",) if K == 1 else tuple(f"target_{k}" for k in range(K))
    return Targets(names=data.target_names or default, units=data.target_units)


def training_of(extra: dict, data: DataDescription, test_score: Score | None) -> Training:
    """The trainer's metrics, with the caller's data set name and the published file's own test score."""
    training = decode(Training, extra.get("metrics", {}), "training")
    if data.dataset is not None:
        training = dataclasses.replace(training, dataset=data.dataset)
    if test_score is not None:
        training = dataclasses.replace(training, **{test_score.field: test_score.value,
                                                    "test_sequences": test_score.sequences})
    return training


def build_metadata(
    name: str, version: int, description: str, model: RecurrentEncoder, extra: dict,
    report: ParityReport, folder: Path, data: DataDescription | None = None, test_score: Score | None = None,
) -> ModelMetadata:
    """metadata.json of the fp32 version in `folder`; the checkpoint's free-form parts are decoded
    through the schema, so a bad one raises MetadataError naming its field."""
    cfg = model.config
    arch = cfg.architecture
    data = data or DataDescription()
    return ModelMetadata(
        name=name,
        version=version,
        description=description,
        architecture=architecture_block(cfg),
        streaming=arch.streaming,
        precision=FP32,
        inputs=tuple(input_specs(arch)),
        outputs=tuple(output_specs(arch)),
        class_labels=cfg.labels,
        targets=targets_of(cfg, data),
        feature_names=data.feature_names,
        normalisation=Normalisation(feature_mean=tuple(cfg.feature_mean), feature_std=tuple(cfg.feature_std),
                                    target_mean=tuple(cfg.target_mean), target_std=tuple(cfg.target_std)),
        parameters=sum(p.numel() for p in model.parameters()),
        training=training_of(extra, data, test_score),
        train_config=extra.get("train_config", {}),
        parity=ParitySummary(
            passed=report.passed,
            atol=report.atol,
            rtol=report.rtol,
            max_abs_error=report.max_abs_error,
            max_abs_error_per_output={k: v.max_abs for k, v in report.outputs.items()},
            max_abs_vs_reference=report.worst("max_abs_vs_reference"),
            max_abs_vs_torch32=report.worst("max_abs_vs_torch32"),
            max_tolerance_used=report.worst("max_tolerance_used"),
            cases=len(report.cases),
        ),
        onnx_sha256=sha256_of(folder / MODEL_FILE),
        checkpoint_sha256=sha256_of(folder / CHECKPOINT_FILE),
        opset=OPSET,
        versions={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    )


def build_int8_metadata(
    source: ModelVersion, name: str, ops: dict[str, int], comparison: Int8Comparison, max_drop: float, folder: Path,
    test_split: str = f"{DATASET} test",
) -> ModelMetadata:
    """The float32 version's metadata, with a quantization report instead of its parity summary, for the
    int8 file in `folder`."""
    description = source.metadata.description
    return dataclasses.replace(
        source.metadata,
        name=name,
        description=f"int8 dynamic quantization of {source.name} v{source.version}"
                    + (f": {description}" if description else ""),
        precision=INT8,
        parity=None,
        onnx_sha256=sha256_of(folder / MODEL_FILE),
        quantization=Quantization(
            scheme=SCHEME,
            source=QuantizationSource(name=source.name, version=source.version,
                                      onnx_sha256=source.metadata.onnx_sha256),
            test_split=test_split,
            test_sequences=comparison.sequences,
            fp32_test_accuracy=comparison.fp32_accuracy,
            int8_test_accuracy=comparison.int8_accuracy,
            accuracy_drop=comparison.accuracy_drop,
            max_accuracy_drop=max_drop,
            max_abs_logits_difference_vs_fp32=comparison.max_abs_logits_difference,
            recurrent_layers_quantized=recurrent_layers_quantized(ops),
            ops=dict(ops),
            onnxruntime=onnxruntime.__version__,
        ),
    )


@contextmanager
def schema_checked(name: str) -> Iterator[None]:
    """Metadata that would not validate is an export error: nothing is published."""
    try:
        yield
    except MetadataError as exc:
        raise SeqserveModelError(f"metadata.json of {name} would not validate: {exc}; not published") from None


def next_version(repository: Path, name: str) -> int:
    """The version a new publication of `name` gets: one past the highest published, 1 for a new name."""
    folder = repository / name
    found = [version_number(p.name) for p in folder.iterdir()] if folder.is_dir() else []
    return max((v for v in found if v is not None), default=0) + 1


def refuse_existing(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise SeqserveModelError(f"{target} exists; pass --overwrite to replace it")


@contextmanager
def staged_version(repository: Path, target: Path) -> Iterator[Path]:
    """A private folder under `repository` to build a version in: renamed to `target` if the block
    succeeds (replacing it), deleted if the block raises."""
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=".staging-") as tmp:
        staging = Path(tmp)
        yield staging
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.chmod(0o755)  # mkdtemp makes it private; the serving user must read it
        staging.rename(target)
        staging.mkdir()  # TemporaryDirectory cleans up the (now empty) staging path


def score_on_test(model: RecurrentEncoder, onnx_file: Path, test: SequenceDataset) -> Score:
    """The exported file's accuracy or RMSE on the caller's test split; InputShapeError if it cannot score it."""
    arch = model.config.architecture
    problem = fit_problem(arch, model.config.labels, test)
    if problem:
        raise InputShapeError(f"test split: {problem}")
    return score(make_session(onnx_file), arch, test)


def publish(
    checkpoint: Path, repository: Path, name: str, version: int, description: str = "",
    overwrite: bool = False, long_length: int = 500, extra_metadata: dict | None = None,
    data: DataDescription | None = None, test: SequenceDataset | None = None,
) -> ParityReport:
    """Export, check and publish atomically; raises SeqserveModelError without touching the repository.

    `data` names the data set, features and targets in the metadata; with a `test` split the published
    file is scored on it and that score (test_accuracy or test_rmse) is recorded instead of the trainer's.
    """
    model, extra = load_checkpoint(checkpoint)
    target = repository / name / str(version)
    refuse_existing(target, overwrite)
    with staged_version(repository, target) as staging:
        export_onnx(model, staging / MODEL_FILE)
        check_graph(staging / MODEL_FILE, model)
        report = check_parity(model, staging / MODEL_FILE, long_length)
        (staging / PARITY_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if not report.passed:
            raise ParityError(f"parity check failed, {name} not published:\n{report.summary()}")
        test_score = score_on_test(model, staging / MODEL_FILE, test) if test is not None else None
        shutil.copyfile(checkpoint, staging / CHECKPOINT_FILE)
        with schema_checked(name):
            metadata = build_metadata(name, version, description, model, extra, report, staging, data, test_score)
            if extra_metadata:  # more top-level sections, as JSON (e.g. accuracy_over_seeds)
                metadata = ModelMetadata.from_json(metadata.to_json() | extra_metadata)
            write_metadata(staging, metadata)
    return report


def publish_int8(
    source: ModelVersion, repository: Path, overwrite: bool = False, max_drop: float = DEFAULT_INT8_MAX_DROP,
    test: SequenceDataset | None = None,
) -> Int8Comparison:
    """Quantize a published version and publish it as `<name>_int8/<version>` if its accuracy on `test`
    (default: the JapaneseVowels test split) drops by at most `max_drop`; raises AccuracyDropError (or another
    SeqserveModelError) without writing."""
    name = int8_name(source.name)
    target = repository / name / str(source.version)
    refuse_existing(target, overwrite)
    with staged_version(repository, target) as staging:
        ops = quantize_int8(source.model_file, staging / MODEL_FILE)
        comparison = compare_on_test_split(source.model_file, staging / MODEL_FILE, source.architecture,
                                           source.class_labels, test)
        if comparison.accuracy_drop > max_drop:
            raise AccuracyDropError(
                f"int8: test accuracy drops by {comparison.accuracy_drop:.4f} "
                f"({comparison.fp32_accuracy:.4f} -> {comparison.int8_accuracy:.4f}), more than the limit "
                f"{max_drop:.4f} (--int8-max-drop); {name} not published"
            )
        with schema_checked(name):
            write_metadata(staging, build_int8_metadata(source, name, ops, comparison, max_drop, staging,
                                                        f"{test.name if test else DATASET} test"))
    return comparison


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt written by `python -m model.train`")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--version", type=int, default=1, help="version number (folder name)")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository root")
    p.add_argument("--description", default="", help="one line saved in metadata.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--long-length", type=int, default=500, help="longest sequence in the parity grid")
    p.add_argument("--int8", action="store_true",
                   help="also publish a dynamically quantized variant as <name>_int8, judged on test accuracy")
    p.add_argument("--int8-max-drop", type=float, default=DEFAULT_INT8_MAX_DROP,
                   help="largest test accuracy drop (float32 - int8, a fraction) for which the variant is published")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = args.repository / args.name / str(args.version)
    try:
        if args.int8:
            refuse_existing(args.repository / int8_name(args.name) / str(args.version), args.overwrite)
        report = publish(args.checkpoint, args.repository, args.name, args.version,
                         args.description, args.overwrite, args.long_length)
        print(report.summary())
        print(f"published {target} (parity passed, max abs error {report.max_abs_error:.2e})")
        if args.int8:
            comparison = publish_int8(read_version(target), args.repository, args.overwrite, args.int8_max_drop)
            print(f"published {args.repository / int8_name(args.name) / str(args.version)} "
                  f"(int8 test accuracy {comparison.int8_accuracy:.4f}, float32 {comparison.fp32_accuracy:.4f}, "
                  f"drop {comparison.accuracy_drop:.4f} <= {args.int8_max_drop:.4f})")
    except SeqserveModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
