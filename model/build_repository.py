"""Rebuild the default model repository: train every preset, export the first seed, report accuracy.

    python -m model.build_repository                  # seeds 0 1 2: train, publish seed 0, write the table
    python -m model.build_repository --seeds 0 --models jv_bigru_attn
    python -m model.build_repository --int8           # also the int8 variants, as export.py --int8

For each preset and seed, trains into `<runs>/<preset>/seed<k>/`; publishes the first seed's
checkpoint to `<repository>/<preset>/1/` through export.py (parity-checked), with the mean test
accuracy over all seeds recorded in its metadata; writes `<runs>/accuracy.json` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path

from seqserve.repository import read_version

from .errors import SeqserveModelError
from .export import publish, publish_int8
from .train import train
from .zoo import PRESETS


def train_seeds(name: str, seeds: list[int], runs: Path, progress: bool) -> list[dict]:
    preset = PRESETS[name]
    summaries = []
    for seed in seeds:
        tc = dataclasses.replace(preset.train, seed=seed)
        summaries.append(train(preset.config, tc, runs / name / f"seed{seed}", progress=progress))
    return summaries


def accuracy_over_seeds(summaries: list[dict]) -> dict:
    accuracies = [s["test_accuracy"] for s in summaries]
    return {
        "seeds": [s["seed"] for s in summaries],
        "test_accuracy": accuracies,
        "mean": statistics.fmean(accuracies),
        "std": statistics.pstdev(accuracies),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(PRESETS), default=list(PRESETS), help="presets to build")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds to train; the first is published")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="training output folder")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository to write")
    p.add_argument("--int8", action="store_true", help="also publish each model's int8 variant (export.py --int8)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)

    table = {}
    try:
        for name in args.models:
            summaries = train_seeds(name, args.seeds, args.runs, progress=not args.no_progress)
            table[name] = accuracy_over_seeds(summaries)
            run = args.runs / name / f"seed{args.seeds[0]}"
            report = publish(run / "checkpoint.pt", args.repository, name, version=1,
                             description=PRESETS[name].description, overwrite=True,
                             extra_metadata={"accuracy_over_seeds": table[name]})
            shutil.copyfile(run / "learning_curves.png", args.repository / name / "1" / "learning_curves.png")
            print(f"{name}: published, parity max abs error {report.max_abs_error:.2e}", file=sys.stderr)
            if args.int8:
                comparison = publish_int8(read_version(args.repository / name / "1"), args.repository, overwrite=True)
                print(f"{name}_int8: published, test accuracy drop {comparison.accuracy_drop:.4f}", file=sys.stderr)
    except SeqserveModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    (args.runs / "accuracy.json").write_text(json.dumps(table, indent=2) + "\n")
    print("| model | test accuracy per seed | mean ± std |")
    print("|---|---|---|")
    for name, row in table.items():
        per_seed = ", ".join(f"{a:.4f}" for a in row["test_accuracy"])
        print(f"| {name} | {per_seed} | {row['mean']:.4f} ± {row['std']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
