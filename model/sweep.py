"""Compare training variants of a preset over many seeds: test accuracy per seed, a table and a plot.

    python -m model.sweep --preset jv_bilstm_attn --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --variant "preset=" --variant "offset noise=--offset-noise 0.2" --out model/sweeps/jv_bilstm_attn

A variant is `name=flags`, the flags being `python -m model.train` options applied on top of the
preset. Every (variant, seed) run trains in its own process (`--jobs` at a time, one thread each);
results go to `<out>/results.jsonl` as they finish, so an interrupted sweep resumes where it stopped.
Writes `<out>/summary.md` (mean over the first three seeds — the repository's measure — and over all)
and `<out>/accuracy.png`. Checkpoints stay under `--runs`. With `--parity`, every run is also
exported and put through export's parity grid, recording its max error against float64 PyTorch and
how far one float32 rounding of the input moves the exact answer (the model's own conditioning).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .errors import ConfigError, SeqserveModelError
from .onnx_export import export_onnx
from .parity import check_parity
from .train import build_parser, configs_from_args, train
from .zoo import PRESETS

RESULTS_FILE, SUMMARY_FILE, PLOT_FILE = "results.jsonl", "summary.md", "accuracy.png"
PARITY_KEY = "parity_max_abs_error"
FIRST_SEEDS = 3  # the repository reports the mean of its first three seeds


@dataclass(frozen=True)
class Variant:
    name: str
    flags: str  # python -m model.train options on top of the preset

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, sep, flags = text.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--variant: expected NAME=FLAGS, got {text!r}")
        return cls(name.strip(), flags.strip())


def parity_figures(checkpoint: Path) -> dict[str, float]:
    """Export a checkpoint to a scratch file and run export's parity grid on it."""
    model, _ = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="seqserve-sweep-parity-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path)
        report = check_parity(model, path)
    return {
        "parity_max_abs_error": report.max_abs_error,
        "input_rounding_effect": report.worst("input_rounding_effect"),
        "parity_passed": report.passed,
    }


def train_one(preset: str, variant: Variant, seed: int, runs: Path, parity: bool) -> dict:
    """Train one (variant, seed) run; returns its results row."""
    argv = ["--preset", preset, *shlex.split(variant.flags), "--out", str(runs)]
    config, tc = configs_from_args(build_parser().parse_args(argv))
    out = runs / variant.name.replace(" ", "_") / f"seed{seed}"
    summary = train(config, dataclasses.replace(tc, seed=seed), out, progress=False)
    row = {"variant": variant.name, "flags": variant.flags, "seed": seed, "test_accuracy": summary["test_accuracy"]}
    return row | (parity_figures(out / "checkpoint.pt") if parity else {})


def check_flags(preset: str, variants: list[Variant]) -> None:
    """Reject unknown train options before any run starts."""
    for v in variants:
        try:
            build_parser().parse_args(["--preset", preset, *shlex.split(v.flags), "--out", "-"])
        except SystemExit:
            raise ConfigError(f"--variant {v.name!r}: bad train options {v.flags!r}") from None


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_sweep(
    preset: str, variants: list[Variant], seeds: list[int], out: Path, runs: Path, jobs: int, parity: bool,
) -> list[dict]:
    """Train every (variant, seed) not yet in `<out>/results.jsonl`; returns all rows."""
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    rows = [r for r in read_results(results_path) if not parity or PARITY_KEY in r]
    done = {(r["variant"], r["seed"]) for r in rows}
    todo = [(v, s) for v in variants for s in seeds if (v.name, s) not in done]
    results_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool, results_path.open("a") as log:
        futures = [pool.submit(train_one, preset, v, s, runs, parity) for v, s in todo]
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"sweep {preset}", file=sys.stderr):
            row = future.result()
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
    return rows


def accuracies_by_variant(rows: list[dict], variants: list[Variant], seeds: list[int]) -> dict[str, list[float]]:
    """Each variant's test accuracies in seed order."""
    by_key = {(r["variant"], r["seed"]): r["test_accuracy"] for r in rows}
    return {v.name: [by_key[(v.name, s)] for s in seeds] for v in variants}


def summary_table(accuracies: dict[str, list[float]], variants: list[Variant], seeds: list[int]) -> str:
    first = seeds[:FIRST_SEEDS]
    lines = [
        f"| variant | train options | seeds {', '.join(map(str, first))}: mean | seeds {seeds[0]}–{seeds[-1]}: "
        "mean ± std | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        acc = accuracies[v.name]
        lines.append(
            f"| {v.name} | `{v.flags or '(preset)'}` | {statistics.fmean(acc[:FIRST_SEEDS]):.4f} | "
            f"{statistics.fmean(acc):.4f} ± {statistics.pstdev(acc):.4f} | {min(acc):.4f} | {max(acc):.4f} |"
        )
    return "\n".join(lines)


def parity_table(rows: list[dict], variants: list[Variant], seeds: list[int]) -> str:
    """Per seed: test accuracy, export parity error and the model's own sensitivity to input rounding."""
    by_key = {(r["variant"], r["seed"]): r for r in rows}
    lines = [
        "| variant | seed | test accuracy | max \\|onnxruntime − float64\\| "
        "| one float32 rounding of x moves the answer by |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        for seed in seeds:
            r = by_key[(v.name, seed)]
            lines.append(f"| {v.name} | {seed} | {r['test_accuracy']:.4f} | {r[PARITY_KEY]:.1e} | "
                         f"{r['input_rounding_effect']:.1e} |")
    return "\n".join(lines)


def plot_accuracies(accuracies: dict[str, list[float]], path: Path, title: str, goal: float | None) -> None:
    """One row per variant: every seed's test accuracy as a dot, the mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(accuracies)
    jitter = np.random.default_rng(0)  # spreads seeds with the same accuracy (k / N ties are common)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.5))
    for row, name in enumerate(names):
        acc = accuracies[name]
        ax.scatter(acc, row + jitter.uniform(-0.2, 0.2, len(acc)), alpha=0.6, color="tab:blue", s=25)
        ax.plot([statistics.fmean(acc)] * 2, [row - 0.3, row + 0.3], color="black", linewidth=2)
    if goal is not None:
        ax.axvline(goal, color="tab:red", linestyle="--", linewidth=1, label=f"goal {goal}")
        ax.legend(loc="best", framealpha=0.9)
    ax.set(yticks=range(len(names)), yticklabels=names, xlabel="test accuracy (dots: seeds, bar: mean)", title=title)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True, help="preset every variant starts from")
    p.add_argument("--variant", action="extend", nargs="+", required=True, metavar="NAME=FLAGS",
                   help="a name and its python -m model.train options, one argument per variant")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)), help="seeds of every variant")
    p.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, summary.md, accuracy.png")
    p.add_argument("--runs", type=Path, help="folder for the runs' checkpoints (default: a temporary one)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    p.add_argument("--goal", type=float, help="draw this accuracy as a line on the plot")
    p.add_argument("--parity", action="store_true", help="also export every run and record its parity figures")
    args = p.parse_args(argv)
    try:
        variants = [Variant.parse(v) for v in args.variant]
        check_flags(args.preset, variants)
        with tempfile.TemporaryDirectory(prefix="seqserve-sweep-") as tmp:
            rows = run_sweep(args.preset, variants, args.seeds, args.out, args.runs or Path(tmp), args.jobs,
                             args.parity)
    except SeqserveModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    accuracies = accuracies_by_variant(rows, variants, args.seeds)
    table = summary_table(accuracies, variants, args.seeds)
    if args.parity:
        table += "\n\n## Export parity of every run (float32 onnxruntime, the parity grid)\n\n"
        table += parity_table(rows, variants, args.seeds)
    (args.out / SUMMARY_FILE).write_text(f"# {args.preset}: test accuracy by training variant\n\n{table}\n")
    plot_accuracies(accuracies, args.out / PLOT_FILE, f"{args.preset}: JapaneseVowels test accuracy", args.goal)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
