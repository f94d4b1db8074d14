"""Export a checkpoint to ONNX, prove parity, and publish it to the model repository.

    python export.py runs/jv_bilstm_attn/checkpoint.pt --name jv_bilstm_attn --version 1

Steps: rebuild the model from the checkpoint -> export (native RNN/LSTM/GRU nodes,
`sequence_lens`, symbolic batch/time) -> graph checks -> parity grid against eager PyTorch
(float32 and float64) -> only if everything passes, write
`<repository>/<name>/<version>/{model.onnx, metadata.json, parity.json, checkpoint.pt}`.
On any failure nothing is written to the repository and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime
import torch

from model.checkpoint import load_checkpoint
from model.encoder import RecurrentEncoder
from model.errors import ParityError, SeqserveModelError
from model.onnx_export import OPSET, check_graph, export_onnx
from model.parity import ParityReport, check_parity
from seqserve.contract import input_specs, output_specs
from seqserve.repository import (
    CHECKPOINT_FILE,
    METADATA_FILE,
    METADATA_FORMAT,
    MODEL_FILE,
    PARITY_FILE,
    sha256_of,
)


def build_metadata(
    name: str, version: int, description: str, model: RecurrentEncoder, extra: dict,
    report: ParityReport, folder: Path,
) -> dict:
    cfg = model.config
    arch = cfg.architecture
    return {
        "format": METADATA_FORMAT,
        "name": name,
        "version": version,
        "description": description,
        "architecture": {k: v for k, v in cfg.to_dict().items() if k not in ("class_labels", "feature_mean", "feature_std")},
        "streaming": arch.streaming,
        "inputs": [s.to_dict() for s in input_specs(arch)],
        "outputs": [s.to_dict() for s in output_specs(arch)],
        "class_labels": list(cfg.class_labels) or [str(i) for i in range(cfg.num_classes)],
        "normalisation": {"feature_mean": list(cfg.feature_mean), "feature_std": list(cfg.feature_std)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": extra.get("metrics", {}),
        "train_config": extra.get("train_config", {}),
        "parity": {
            "passed": report.passed,
            "atol": report.atol,
            "rtol": report.rtol,
            "max_abs_error": report.max_abs_error,
            "max_abs_error_per_output": {k: v.max_abs for k, v in report.outputs.items()},
            "max_abs_vs_torch32": report.max_abs_vs_torch32,
            "cases": len(report.cases),
        },
        "onnx_sha256": sha256_of(folder / MODEL_FILE),
        "checkpoint_sha256": sha256_of(folder / CHECKPOINT_FILE),
        "opset": OPSET,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }


def publish(
    checkpoint: Path, repository: Path, name: str, version: int, description: str = "",
    overwrite: bool = False, long_length: int = 500, extra_metadata: dict | None = None,
) -> ParityReport:
    """Export, check and publish atomically; raises SeqserveModelError without touching the repository."""
    model, extra = load_checkpoint(checkpoint)
    target = repository / name / str(version)
    if target.exists() and not overwrite:
        raise SeqserveModelError(f"{target} exists; pass --overwrite to replace it")
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=".staging-") as tmp:
        staging = Path(tmp)
        export_onnx(model, staging / MODEL_FILE)
        check_graph(staging / MODEL_FILE, model)
        report = check_parity(model, staging / MODEL_FILE, long_length)
        (staging / PARITY_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if not report.passed:
            raise ParityError(f"parity check failed, {name} not published:\n{report.summary()}")
        shutil.copyfile(checkpoint, staging / CHECKPOINT_FILE)
        metadata = build_metadata(name, version, description, model, extra, report, staging) | (extra_metadata or {})
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.chmod(0o755)  # mkdtemp makes it private; the serving user must read it
        staging.rename(target)
        staging.mkdir()  # TemporaryDirectory cleans up the (now empty) staging path
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt written by `python -m model.train`")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--version", type=int, default=1, help="version number (folder name)")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository root")
    p.add_argument("--description", default="", help="one line saved in metadata.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--long-length", type=int, default=500, help="longest sequence in the parity grid")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = publish(args.checkpoint, args.repository, args.name, args.version,
                         args.description, args.overwrite, args.long_length)
    except SeqserveModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"published {args.repository / args.name / str(args.version)} "
          f"(parity passed, max abs error {report.max_abs_error:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
