"""One command from a labelled data file to a published model.

    python -m model.fit TRAIN [--test TEST] --name NAME [--repository DIR] [--task classify|regress]
                        [--cell lstm|gru|rnn] [--seed N] [training flags...]
    seqserve-fit BasicMotions_TRAIN.ts --test BasicMotions_TEST.ts --name basic_motions     # installed

Reads TRAIN (and TEST) through seqserve.labelled: `.ts` (UEA/UCR/TSER), JSON Lines, Parquet, `.npz`
records, or long-form CSV. The task comes from the data (class labels: classify; numeric targets:
regress) unless --task says. Without --test, a stratified share of TRAIN is held out for testing;
a validation share of the rest decides early stopping. Architecture and training options default
from the data's size and length (model/defaults.py); every flag overrides them.

Then: train (progress bar on stderr) -> export with the parity gate -> publish atomically to
`DIR/NAME/<next version>/` -> report in the run folder (`runs/NAME-<version>/` or --out): metrics.json,
learning_curves.png, confusion_matrix.png (classify) or predicted_vs_true.png (regress). The last line
on stdout is one JSON object: name, version, task, test_accuracy or test_rmse, train_seconds, path, ...

Exit status: 0 published; 2 bad data or flags (one line on stderr, nothing published); 1 a failure
after training (e.g. the parity gate; nothing published).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqserve.labelled import FILLS, DataError, LabelledSet, check_split, read_labelled, split
from seqserve.metadata import MODEL_NAME, NAME_PATTERN
from seqserve.repository import ModelVersion, read_version

from .config import TASKS, EncoderConfig, TrainConfig
from .data import SequenceDataset
from .defaults import TIME_LIMIT_SECONDS, default_configs
from .errors import ConfigError, SeqserveModelError
from .evaluate import predict as predict_onnx
from .export import DEFAULT_INT8_MAX_DROP, DataDescription, next_version, publish, publish_int8
from .parity import make_session
from .quantize import int8_name
from .report import write_classification_report, write_regression_report
from .train import (
    LOSSES,
    Splits,
    add_architecture_arguments,
    add_training_arguments,
    override,
    train,
)

TEST_FRACTION = 0.25  # share of each class held out for testing when there is no --test file
DEFAULT_REPOSITORY = Path("model_repository")
RUNS = Path("runs")


@dataclass(frozen=True)
class FitData:
    """The training and test sets, as the trainer takes them, and what the metadata and report name."""

    splits: Splits
    feature_names: list[str]
    test_source: str  # the test file, or "a hold-out of TRAIN"

    @property
    def task(self) -> str:
        return "regress" if self.splits.train.is_regression else "classify"


def read_data(train_path: Path, test_path: Path | None, task: str | None, seed: int,
              fill: str | None = None) -> FitData:
    """Read and check the files; raises DataError (naming file, line or record, and field) on bad data."""
    train_set = read_labelled(train_path, task=task, fill=fill)
    if test_path is None:
        check_split(train_set, None)
        train_set, test_set = split(train_set, TEST_FRACTION, seed)
        kind = "stratified " if train_set.task == "classify" else ""
        test_source = f"a {TEST_FRACTION:.0%} {kind}hold-out of {train_path}"
    else:
        test_set = read_labelled(test_path, task=train_set.task, fill=fill)
        check_split(train_set, test_set)
        test_source = str(test_path)
    splits = as_splits(train_set, test_set, train_path.stem, (test_path or train_path).stem)
    return FitData(splits, list(train_set.feature_names), test_source)


def as_splits(train_set: LabelledSet, test_set: LabelledSet, train_name: str, test_name: str) -> Splits:
    """The reader's sets as the trainer's, named by their files' stems; class indices from the training set's
    classes."""
    train_data = SequenceDataset.from_labelled(train_set, train_name)
    return Splits(train_data, SequenceDataset.from_labelled(test_set, test_name, train_data.class_labels))


def fit_configs(data: FitData, args: argparse.Namespace) -> tuple[EncoderConfig, TrainConfig]:
    """The data-driven defaults, overridden by every flag given."""
    config, tc = default_configs(data.splits.train, args.val_fraction or TrainConfig.val_fraction)
    return override(config, tc, args)


def write_report(run_dir: Path, published: ModelVersion, test: SequenceDataset, result: dict[str, Any]) -> None:
    """The report in `run_dir`, from the published model.onnx's answers on the test set (what is served)."""
    arch = published.architecture
    answers = predict_onnx(make_session(published.model_file), arch, test.sequences)  # (N, C) logits or (N, K)
    if arch.regression:
        names = list(published.metadata.targets.names) if published.metadata.targets else ["target"]
        write_regression_report(run_dir, result, answers, test.targets, names)
    else:
        write_classification_report(run_dir, result, answers.argmax(axis=1), test.targets, published.class_labels)


def fit(args: argparse.Namespace, data: FitData, config: EncoderConfig, tc: TrainConfig) -> dict[str, Any]:
    """Train, publish and report; returns the result line's object."""
    version = next_version(args.repository, args.name)
    run_dir = args.out or RUNS / f"{args.name}-{version}"
    started = time.monotonic()
    summary = train(config, tc, run_dir,
                    progress=not args.no_progress, splits=data.splits, loss=args.loss, time_limit=args.time_limit)
    train_seconds = time.monotonic() - started
    description = args.description or f"{data.task}: fitted to {data.splits.train.name} by model.fit"
    report = publish(run_dir / "checkpoint.pt", args.repository, args.name, version, description,
                     data=DataDescription(dataset=data.splits.train.name, feature_names=tuple(data.feature_names)),
                     test=data.splits.test)
    target = args.repository / args.name / str(version)
    published = read_version(target)
    score = "test_accuracy" if data.task == "classify" else "test_rmse"
    result: dict[str, Any] = {
        "name": args.name,
        "version": version,
        "task": data.task,
        score: getattr(published.metadata.training, score),  # the published ONNX file's own score
        "train_seconds": round(train_seconds, 1),
        "path": str(target),
        "dataset": summary["dataset"],
        "test_source": data.test_source,
        "train_sequences": summary["train_sequences"],
        "val_sequences": summary["val_sequences"],
        "test_sequences": summary["test_sequences"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "parity_max_abs_error": report.max_abs_error,
        "run": str(run_dir),
    }
    if args.int8:
        comparison = publish_int8(published, args.repository, max_drop=args.int8_max_drop,
                                  test=data.splits.test)
        result |= {"int8_path": str(args.repository / int8_name(args.name) / str(version)),
                   "int8_test_accuracy": comparison.int8_accuracy}
    result["fit_seconds"] = round(time.monotonic() - started, 1)
    write_report(run_dir, published, data.splits.test, result)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train", type=Path, metavar="TRAIN", help="labelled training data (.ts, .jsonl, .parquet, "
                                                             ".npz, .csv)")
    p.add_argument("--test", type=Path, help="labelled test data (default: a stratified hold-out of TRAIN)")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository root")
    p.add_argument("--task", choices=TASKS, help="classify or regress (default: from the data)")
    p.add_argument("--fill", choices=sorted(FILLS),
                   help="fill missing values (`?`, NaN, empty cells) instead of refusing them: "
                        + "; ".join(f"{k}: {v}" for k, v in FILLS.items()))
    p.add_argument("--loss", choices=LOSSES, default="mse",
                   help="regression loss on the error in units of each target's std (default mse)")
    p.add_argument("--out", type=Path, help="run folder for the checkpoint and report (default runs/NAME-VERSION)")
    p.add_argument("--description", default="", help="one line saved in metadata.json")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT_SECONDS,
                   help="stop training after the epoch that passes this many seconds")
    p.add_argument("--int8", action="store_true", help="also publish an int8 variant as NAME_int8, judged on the "
                                                       "test data's accuracy (classify only)")
    p.add_argument("--int8-max-drop", type=float, default=DEFAULT_INT8_MAX_DROP,
                   help="largest test accuracy drop for which the int8 variant is published")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_architecture_arguments(p)
    add_training_arguments(p, "from the data's size and length, model/defaults.py")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not MODEL_NAME.fullmatch(args.name):
            raise ConfigError(f"--name: {args.name!r} is not a model name ({NAME_PATTERN})")
        data = read_data(args.train, args.test, args.task, args.seed or 0, args.fill)
        if args.int8 and data.task == "regress":
            raise ConfigError("--int8: int8 variants are judged on test accuracy; a regression model has none")
        config, tc = fit_configs(data, args)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = fit(args, data, config, tc)
    except SeqserveModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

