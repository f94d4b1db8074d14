"""Train a recurrent encoder on JapaneseVowels.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ATTENTIONS, CELLS, EncoderConfig, TrainConfig
from .data import SequenceDataset, iter_batches, load_split, stratified_split
from .encoder import EncoderOutput, RecurrentEncoder
from .errors import SeqserveModelError
from .zoo import PRESETS


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def step_loss(out: EncoderOutput, lengths: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of every prefix's prediction over the real steps; 0 without step logits."""
    if out.step_logits is None:
        return out.logits.new_zeros(())
    B, T, C = out.step_logits.shape
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    per_step = nn.functional.cross_entropy(
        out.step_logits.reshape(B * T, C), targets.repeat_interleave(T),
        reduction="none", label_smoothing=label_smoothing,
    ).view(B, T)
    return (per_step * mask).sum() / mask.sum()


def sequence_loss(out: EncoderOutput, lengths: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the final prediction; with step logits, also of every prefix's prediction."""
    final = nn.functional.cross_entropy(out.logits, targets, label_smoothing=label_smoothing)
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


def run_epoch(
    model: RecurrentEncoder,
    data: SequenceDataset,
    batch_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    tc: TrainConfig | None = None,
    generator: torch.Generator | None = None,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """One pass over `data`; trains when an optimizer is given. Returns (mean loss, accuracy)."""
    training = optimizer is not None
    tc = tc or TrainConfig()
    model.train(training)
    total_loss, correct = 0.0, 0
    with torch.set_grad_enabled(training):
        for x, lengths, targets in iter_batches(
            data, batch_size, shuffle=training, generator=generator,
            crop=tc.crop if training else 1.0, stretch=tc.stretch if training else 0.0,
        ):
            if training:
                x = augment_features(x, model, tc, generator)
            out = model(x, lengths)
            if training and tc.mixup > 0:
                loss = mixup_loss(model, out, targets, tc, generator) + step_loss(out, lengths, targets, tc.label_smoothing)
            else:
                loss = sequence_loss(out, lengths, targets, tc.label_smoothing if training else 0.0)
            if training:
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                if after_step is not None:
                    after_step()
            total_loss += loss.item() * len(targets)
            correct += (out.logits.argmax(-1) == targets).sum().item()
    return total_loss / len(data), correct / len(data)


def evaluate_accuracy(model: RecurrentEncoder, data: SequenceDataset) -> float:
    return run_epoch(model, data, batch_size=128)[1]


def plot_learning_curves(history: list[EpochMetrics], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m.epoch for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [m.train_loss for m in history], label="train")
    ax_loss.plot(epochs, [m.val_loss for m in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.plot(epochs, [m.train_acc for m in history], label="train")
    ax_acc.plot(epochs, [m.val_acc for m in history], label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.01), title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(config: EncoderConfig, tc: TrainConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train with early stopping on validation loss; keep the best checkpoint."""
    torch.set_num_threads(tc.threads)
    generator = seed_everything(tc.seed)
    full_train, test = load_split("train"), load_split("test")
    if config.input_size != full_train.num_features:
        raise SeqserveModelError(
            f"input_size: config says {config.input_size}, the data has {full_train.num_features} features"
        )
    train_idx, val_idx = stratified_split(full_train.targets, tc.val_fraction, tc.seed)
    train_set, val_set = full_train.subset(train_idx), full_train.subset(val_idx)
    mean, std = train_set.feature_stats()
    config = config.replace(
        num_classes=len(full_train.class_labels),
        class_labels=list(full_train.class_labels),
        feature_mean=mean,
        feature_std=std,
    )
    model = RecurrentEncoder(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema), use_buffers=True) if tc.ema else None
    kept = averaged.module if averaged is not None else model  # the weights evaluated and saved
    after_step = (lambda: averaged.update_parameters(model)) if averaged is not None else None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    history: list[EpochMetrics] = []
    best: tuple[float, float] | None = None  # (-val_loss, val_acc)
    since_best = 0
    bar = tqdm(range(1, tc.epochs + 1), desc=out_dir.name, disable=not progress, file=sys.stderr)
    with (out_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(EpochMetrics.__dataclass_fields__))
        writer.writeheader()
        for epoch in bar:
            train_loss, train_acc = run_epoch(model, train_set, tc.batch_size, optimizer, tc, generator, after_step)
            val_loss, val_acc = run_epoch(kept, val_set, batch_size=128)
            scheduler.step()
            metrics = EpochMetrics(epoch, train_loss, train_acc, val_loss, val_acc)
            history.append(metrics)
            writer.writerow(asdict(metrics))
            f.flush()
            score = (-val_loss, val_acc)
            if tc.keep == "last" or best is None or score > best:
                best, since_best = score, 0
                save_checkpoint(checkpoint, kept, {"epoch": epoch, "train_config": asdict(tc)})
            else:
                since_best += 1
            bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}", best_val_loss=f"{-best[0]:.3f}")
            if tc.keep == "best" and since_best >= tc.patience:
                break

    best_model, extra = load_checkpoint(checkpoint)
    summary = {
        "dataset": "JapaneseVowels",
        "seed": tc.seed,
        "best_epoch": extra["epoch"],
        "epochs_run": len(history),
        "val_loss": -best[0],
        "val_accuracy": best[1],
        "test_accuracy": evaluate_accuracy(best_model, test),
        "train_sequences": len(train_set),
        "val_sequences": len(val_set),
        "test_sequences": len(test),
    }
    save_checkpoint(checkpoint, best_model, {**extra, "metrics": summary})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_learning_curves(history, out_dir / "learning_curves.png", f"{out_dir.name} (seed {tc.seed})")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a default model's architecture and training options (model/zoo.py)")
    p.add_argument("--cell", choices=CELLS, help="recurrent cell")
    p.add_argument("--hidden-size", type=int, help="hidden units per direction")
    p.add_argument("--layers", type=int, help="stacked recurrent layers")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, help="add a backward direction")
    p.add_argument("--attention", choices=ATTENTIONS, help="pooling over time")
    p.add_argument("--attention-query", action=argparse.BooleanOptionalAction,
                   help="score steps against the final states (default) or by themselves")
    p.add_argument("--dropout", type=float, help="dropout between layers and before the head")
    p.add_argument("--step-logits", action=argparse.BooleanOptionalAction, help="train a running prediction")
    training = p.add_argument_group("training (defaults: the preset's, else TrainConfig's)")
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
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict:
    """The flags the user gave, keyed by config field name."""
    return {field: getattr(args, flag) for field, flag in names.items() if getattr(args, flag) is not None}


def configs_from_args(args: argparse.Namespace) -> tuple[EncoderConfig, TrainConfig]:
    """The preset's (or default) configs, overridden by every flag given."""
    preset = PRESETS[args.preset] if args.preset else None
    config = preset.config if preset else EncoderConfig()
    tc = preset.train if preset else TrainConfig()
    config = config.replace(**_given(args, {
        "cell": "cell", "hidden_size": "hidden_size", "num_layers": "layers", "bidirectional": "bidirectional",
        "attention": "attention", "attention_query": "attention_query", "dropout": "dropout", "step_logits": "step_logits",
    }))
    tc = dataclasses.replace(tc, **_given(args, {name: name for name in TrainConfig.__dataclass_fields__
                                                  if hasattr(args, name)}))
    return config, tc


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
