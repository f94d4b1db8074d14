"""Train a recurrent encoder: on JapaneseVowels (the presets), or on any labelled data through model.fit.

    python -m model.train --preset jv_bilstm_attn --seed 0 --out runs/jv_bilstm_attn
    python -m model.train --cell gru --layers 2 --hidden-size 64 --epochs 60 --out runs/gru

Writes to --out: `checkpoint.pt` (best validation epoch), `metrics.csv` (one row per
epoch), `learning_curves.png` and `summary.json` (test accuracy of the best checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ATTENTIONS, CELLS, INPUT_STAGES, EncoderConfig, TrainConfig
from .data import SequenceDataset, iter_batches, load_split, stratified_split
from .encoder import EncoderOutput, RecurrentEncoder
from .errors import SeqserveModelError
from .report import plot_learning_curves
from .zoo import PRESETS

EVAL_BATCH = 128  # sequences per forward pass when evaluating
LOSSES = ("mse", "huber")  # regression losses, both on the error in units of each target's std


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch: mean loss and score (accuracy, or RMSE in the target's units) on training and validation."""

    epoch: int
    train_loss: float
    train_score: float
    val_loss: float
    val_score: float

    def row(self, metric: str) -> dict[str, float]:
        """The metrics.csv row, its score columns named by the metric (`train_acc`, `val_rmse`, ...)."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, f"train_{metric}": self.train_score,
                "val_loss": self.val_loss, f"val_{metric}": self.val_score}


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def head_output(out: EncoderOutput, name: str) -> Tensor:
    """The head's `logits` (classify) or `prediction` (regress); a model of the other task has none."""
    value = getattr(out, name)
    if value is None:
        raise SeqserveModelError(f"{name}: this model does not output it (a model of the other task)")
    return value


def step_loss(out: EncoderOutput, lengths: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of every prefix's prediction over the real steps; 0 without step logits."""
    if out.step_logits is None:
        return torch.zeros(())
    B, T, C = out.step_logits.shape
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    per_step = nn.functional.cross_entropy(
        out.step_logits.reshape(B * T, C), targets.repeat_interleave(T),
        reduction="none", label_smoothing=label_smoothing,
    ).view(B, T)
    return (per_step * mask).sum() / mask.sum()


def sequence_loss(out: EncoderOutput, lengths: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the final prediction; with step logits, also of every prefix's prediction."""
    final = nn.functional.cross_entropy(head_output(out, "logits"), targets, label_smoothing=label_smoothing)
    return final + step_loss(out, lengths, targets, label_smoothing)


def sample_beta(concentration: float, generator: torch.Generator | None) -> float:
    """One draw from Beta(concentration, concentration), reproducible through `generator`."""
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    return float(np.random.default_rng(seed).beta(concentration, concentration))


def mixup_loss(
    model: RecurrentEncoder, out: EncoderOutput, targets: Tensor, tc: TrainConfig, generator: torch.Generator | None
) -> Tensor:
    """Manifold mixup: the head reads each sequence's summary blended with another sequence's, and
    the final prediction's loss is blended with the same weight."""
    weight = sample_beta(tc.mixup, generator)
    partner = torch.randperm(len(targets), generator=generator)  # (B,)
    summary = model.summary(out)  # (B, D*H)
    logits = model.classify(weight * summary + (1.0 - weight) * summary[partner])  # (B, C)
    loss = nn.functional.cross_entropy(logits, targets, label_smoothing=tc.label_smoothing)
    partner_loss = nn.functional.cross_entropy(logits, targets[partner], label_smoothing=tc.label_smoothing)
    return weight * loss + (1.0 - weight) * partner_loss


def augment_features(x: Tensor, model: RecurrentEncoder, tc: TrainConfig, generator: torch.Generator | None) -> Tensor:
    """Training-time feature noise and masking, in units of each feature's std: (B, T, F) -> (B, T, F)."""
    std = 1.0 / model.feature_inv_std  # (F,)
    if tc.input_noise > 0:
        x = x + tc.input_noise * std * torch.randn(x.shape, generator=generator)
    if tc.offset_noise > 0:
        B, _, F = x.shape
        x = x + tc.offset_noise * std * torch.randn((B, 1, F), generator=generator)  # one shift per sequence
    if tc.feature_mask > 0:
        B, _, F = x.shape
        masked = torch.rand((B, 1, F), generator=generator) < tc.feature_mask  # (B, 1, F): whole coefficients
        x = torch.where(masked, model.feature_mean, x)  # the mean normalises to 0
    return x


@dataclass(frozen=True)
class Classification:
    """Sequence -> class: cross-entropy (with the preset's label smoothing, mixup, step logits); accuracy."""

    metric: str = "acc"  # metrics.csv column suffix
    summary_metric: str = "accuracy"  # summary / metadata key suffix
    higher_is_better: bool = True

    def loss(self, model: RecurrentEncoder, out: EncoderOutput, lengths: Tensor, targets: Tensor,
             tc: TrainConfig, training: bool, generator: torch.Generator | None) -> Tensor:
        if training and tc.mixup > 0:
            return mixup_loss(model, out, targets, tc, generator) + step_loss(out, lengths, targets, tc.label_smoothing)
        return sequence_loss(out, lengths, targets, tc.label_smoothing if training else 0.0)

    def predict(self, out: EncoderOutput) -> Tensor:
        return head_output(out, "logits").argmax(-1)  # (B,)

    def score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """Accuracy of class indices (N,) against targets (N,)."""
        return float((predictions == targets).mean())


@dataclass(frozen=True)
class Regression:
    """Sequence -> K numbers: MSE (or Huber) on the error in units of each target's std; RMSE in target units."""

    loss_name: str = "mse"
    metric: str = "rmse"
    summary_metric: str = "rmse"
    higher_is_better: bool = False

    def loss(self, model: RecurrentEncoder, out: EncoderOutput, lengths: Tensor, targets: Tensor,
             tc: TrainConfig, training: bool, generator: torch.Generator | None) -> Tensor:
        std = torch.tensor(model.config.target_std, dtype=targets.dtype)  # (K,)
        error = (head_output(out, "prediction") - targets) / std  # (B, K), in units of each target's std
        if self.loss_name == "huber":
            return nn.functional.huber_loss(error, torch.zeros_like(error))
        return (error**2).mean()

    def predict(self, out: EncoderOutput) -> Tensor:
        return head_output(out, "prediction")  # (B, K), the target's units

    def score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """RMSE of predictions (N, K) against targets (N, K), over every target value."""
        return float(np.sqrt(np.mean((predictions - targets) ** 2)))


Objective = Classification | Regression


def objective_for(data: SequenceDataset, loss: str = "mse") -> Objective:
    if not data.is_regression:
        return Classification()
    if loss not in LOSSES:
        raise SeqserveModelError(f"loss: unknown regression loss {loss!r}; expected one of {', '.join(LOSSES)}")
    return Regression(loss_name=loss)


def run_epoch(
    model: RecurrentEncoder,
    data: SequenceDataset,
    batch_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    tc: TrainConfig | None = None,
    generator: torch.Generator | None = None,
    after_step: Callable[[], None] | None = None,
    objective: Objective | None = None,
) -> tuple[float, float]:
    """One pass over `data`; trains when an optimizer is given. Returns (mean loss, score)."""
    training = optimizer is not None
    tc = tc or TrainConfig()
    objective = objective or objective_for(data)
    model.train(training)
    total_loss, predictions = 0.0, []
    with torch.set_grad_enabled(training):
        for x, lengths, targets in iter_batches(
            data, batch_size, shuffle=training, generator=generator,
            crop=tc.crop if training else 1.0, stretch=tc.stretch if training else 0.0,
        ):
            if training:
                x = augment_features(x, model, tc, generator)
            out = model(x, lengths)
            loss = objective.loss(model, out, lengths, targets, tc, training, generator)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                if after_step is not None:
                    after_step()
            total_loss += loss.item() * len(targets)
            predictions.append((objective.predict(out).detach().numpy(), targets.numpy()))
    predicted = np.concatenate([p for p, _ in predictions])
    seen = np.concatenate([t for _, t in predictions])  # the targets in the order the batches came
    return total_loss / len(data), objective.score(predicted, seen)


def predict(model: RecurrentEncoder, data: SequenceDataset, objective: Objective) -> np.ndarray:
    """The model's answer for every sequence, in order: class indices (N,) or predictions (N, K)."""
    model.eval()
    with torch.no_grad():
        parts = [objective.predict(model(x, lengths)).numpy()
                 for x, lengths, _ in iter_batches(data, EVAL_BATCH, shuffle=False)]
    return np.concatenate(parts)


def evaluate_accuracy(model: RecurrentEncoder, data: SequenceDataset) -> float:
    return run_epoch(model, data, batch_size=EVAL_BATCH)[1]


def data_config(config: EncoderConfig, train_set: SequenceDataset) -> EncoderConfig:
    """The config completed from the training data: feature normalisation, and the classes or the targets."""
    mean, std = train_set.feature_stats()
    if train_set.is_regression:
        target_mean, target_std = train_set.target_stats()
        return config.replace(task="regress", num_targets=train_set.targets.shape[1], target_mean=target_mean,
                              target_std=target_std, feature_mean=mean, feature_std=std)
    return config.replace(num_classes=len(train_set.class_labels), class_labels=list(train_set.class_labels),
                          feature_mean=mean, feature_std=std)


@dataclass(frozen=True)
class Splits:
    """What train() fits, early-stops and scores on: the labelled training set (a validation share is taken
    from it) and the test set."""

    train: SequenceDataset
    test: SequenceDataset

    @classmethod
    def japanese_vowels(cls) -> Splits:
        return cls(load_split("train"), load_split("test"))


def train(config: EncoderConfig, tc: TrainConfig, out_dir: Path, progress: bool = True,
          splits: Splits | None = None, loss: str = "mse", time_limit: float | None = None) -> dict:
    """Train with early stopping on validation loss; keep the best checkpoint.

    Trains on JapaneseVowels unless `splits` are given; `loss` is the regression loss; training stops
    after the epoch that passes `time_limit` seconds, if given.
    """
    torch.set_num_threads(tc.threads)
    generator = seed_everything(tc.seed)
    splits = splits or Splits.japanese_vowels()
    full_train, test = splits.train, splits.test
    if config.input_size != full_train.num_features:
        raise SeqserveModelError(
            f"input_size: config says {config.input_size}, the data has {full_train.num_features} features"
        )
    objective = objective_for(full_train, loss)
    train_idx, val_idx = stratified_split(full_train.targets, tc.val_fraction, tc.seed)
    train_set, val_set = full_train.subset(train_idx), full_train.subset(val_idx)
    model = RecurrentEncoder(data_config(config, train_set))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema), use_buffers=True) if tc.ema else None
    kept = cast(RecurrentEncoder, averaged.module) if averaged is not None else model  # evaluated and saved
    after_step = (lambda: averaged.update_parameters(model)) if averaged is not None else None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    history: list[EpochMetrics] = []
    best: tuple[float, float] | None = None  # (-val_loss, val_score signed so that higher is better)
    since_best = 0
    started = time.monotonic()
    sign = 1.0 if objective.higher_is_better else -1.0
    extra = {"train_config": asdict(tc)} | ({"loss": loss} if full_train.is_regression else {})
    bar = tqdm(range(1, tc.epochs + 1), desc=out_dir.name, disable=not progress, file=sys.stderr)
    with (out_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(EpochMetrics(0, 0, 0, 0, 0).row(objective.metric)))
        writer.writeheader()
        for epoch in bar:
            train_loss, train_score = run_epoch(model, train_set, tc.batch_size, optimizer, tc, generator,
                                                after_step, objective)
            val_loss, val_score = run_epoch(kept, val_set, EVAL_BATCH, objective=objective)
            scheduler.step()
            metrics = EpochMetrics(epoch, train_loss, train_score, val_loss, val_score)
            history.append(metrics)
            writer.writerow(metrics.row(objective.metric))
            f.flush()
            score = (-val_loss, sign * val_score)
            if tc.keep == "last" or best is None or score > best:
                best, since_best = score, 0
                save_checkpoint(checkpoint, kept, {"epoch": epoch} | extra)
            else:
                since_best += 1
            bar.set_postfix({"loss": f"{train_loss:.3f}", f"val_{objective.metric}": f"{val_score:.3f}",
                             "best_val_loss": f"{-best[0]:.3f}"})
            if tc.keep == "best" and since_best >= tc.patience:
                break
            if time_limit is not None and time.monotonic() - started > time_limit:
                break

    best_model, extra = load_checkpoint(checkpoint)
    assert best is not None  # at least one epoch ran
    summary: dict[str, Any] = {
        "dataset": full_train.name,
        "seed": tc.seed,
        "best_epoch": extra["epoch"],
        "epochs_run": len(history),
        "val_loss": -best[0],
        f"val_{objective.summary_metric}": sign * best[1],
        f"test_{objective.summary_metric}": objective.score(predict(best_model, test, objective), test.targets),
        "train_sequences": len(train_set),
        "val_sequences": len(val_set),
        "test_sequences": len(test),
    }
    save_checkpoint(checkpoint, best_model, {**extra, "metrics": summary})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_learning_curves(history, objective.metric, out_dir / "learning_curves.png",
                         f"{out_dir.name} (seed {tc.seed})")
    return summary


ARCHITECTURE_FLAGS = {  # EncoderConfig field -> argparse dest
    "cell": "cell", "hidden_size": "hidden_size", "num_layers": "layers", "bidirectional": "bidirectional",
    "attention": "attention", "attention_query": "attention_query", "dropout": "dropout",
    "step_logits": "step_logits", "input_stage": "input_stage", "conv_channels": "conv_channels",
    "conv_kernel": "conv_kernel", "conv_stride": "conv_stride",
}


def add_architecture_arguments(p: argparse.ArgumentParser) -> None:
    """The encoder's flags (model.train and model.fit)."""
    arch = p.add_argument_group("architecture")
    arch.add_argument("--cell", choices=CELLS, help="recurrent cell")
    arch.add_argument("--hidden-size", type=int, help="hidden units per direction")
    arch.add_argument("--layers", type=int, help="stacked recurrent layers")
    arch.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, help="add a backward direction")
    arch.add_argument("--attention", choices=ATTENTIONS, help="pooling over time")
    arch.add_argument("--attention-query", action=argparse.BooleanOptionalAction,
                      help="score steps against the final states (default) or by themselves")
    arch.add_argument("--dropout", type=float, help="dropout between layers and before the head")
    arch.add_argument("--step-logits", action=argparse.BooleanOptionalAction, help="train a running prediction")
    arch.add_argument("--input-stage", choices=INPUT_STAGES,
                      help="none, or conv: a strided 1-D convolution over time before the recurrent layers")
    arch.add_argument("--conv-channels", type=int, help="input stage: convolution filters")
    arch.add_argument("--conv-kernel", type=int, help="input stage: steps each filter reads")
    arch.add_argument("--conv-stride", type=int, help="input stage: steps between two frames")


def add_training_arguments(p: argparse.ArgumentParser, defaults: str) -> None:
    """The training flags (model.train and model.fit); `defaults` says where unset ones come from."""
    training = p.add_argument_group(f"training (defaults: {defaults})")
    training.add_argument("--epochs", type=int, help="maximum epochs")
    training.add_argument("--patience", type=int, help="early-stopping patience (epochs)")
    training.add_argument("--keep", choices=("best", "last"),
                          help="keep the best-validation checkpoint (with early stopping) or the last epoch's")
    training.add_argument("--batch-size", type=int, help="sequences per step")
    training.add_argument("--lr", type=float, help="AdamW learning rate")
    training.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    training.add_argument("--input-noise", type=float, help="training input noise, in units of each feature's std")
    training.add_argument("--label-smoothing", type=float, help="training label smoothing")
    training.add_argument("--crop", type=float,
                          help="train on random windows of at least this fraction of each sequence (1 = off)")
    training.add_argument("--mixup", type=float,
                          help="manifold mixup of the pooled summaries, Beta(a, a) weights (0 = off)")
    training.add_argument("--offset-noise", type=float,
                          help="training noise constant over each sequence, in units of each feature's std")
    training.add_argument("--feature-mask", type=float,
                          help="probability of blanking each feature of a training sequence (0 = off)")
    training.add_argument("--stretch", type=float,
                          help="resample training sequences in time by a random factor within 1 ± this (0 = off)")
    training.add_argument("--ema", type=float,
                          help="keep an exponential moving average of the weights with this decay (0 = off)")
    training.add_argument("--val-fraction", type=float, help="share of each class held out for validation")
    training.add_argument("--seed", type=int, help="seed of data split, init and shuffling")
    training.add_argument("--threads", type=int, help="torch intra-op threads")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a default model's architecture and training options (model/zoo.py)")
    add_architecture_arguments(p)
    add_training_arguments(p, "the preset's, else TrainConfig's")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict:
    """The flags the user gave, keyed by config field name."""
    return {field: getattr(args, flag) for field, flag in names.items() if getattr(args, flag, None) is not None}


def override(config: EncoderConfig, tc: TrainConfig, args: argparse.Namespace) -> tuple[EncoderConfig, TrainConfig]:
    """`config` and `tc` with every architecture and training flag given in `args`."""
    config = config.replace(**_given(args, ARCHITECTURE_FLAGS))
    tc = dataclasses.replace(tc, **_given(args, {name: name for name in TrainConfig.__dataclass_fields__}))
    return config, tc


def configs_from_args(args: argparse.Namespace) -> tuple[EncoderConfig, TrainConfig]:
    """The preset's (or default) configs, overridden by every flag given."""
    preset = PRESETS[args.preset] if args.preset else None
    return override(preset.config if preset else EncoderConfig(), preset.train if preset else TrainConfig(), args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, tc = configs_from_args(args)
        summary = train(config, tc, args.out, progress=not args.no_progress)
    except SeqserveModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
