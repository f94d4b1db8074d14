"""Regenerate the Python API code from protos/: `python -m seqserve.protogen [--out DIR]`.

Writes seqserve/v1/seqserve_pb2.py, seqserve_pb2.pyi and seqserve_pb2_grpc.py (needs the dev
extra's grpcio-tools). The generated files are committed; a test checks they are current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTOS = ["seqserve/v1/seqserve.proto"]


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev-only dependency

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(PROTO_ROOT / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository root)")
    generate(p.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
