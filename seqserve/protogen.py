"""Regenerate the Python API code from protos/: `python -m seqserve.protogen [--out DIR]`.

Writes, for each API, `<module>_pb2.py`, `<module>_pb2.pyi` and `<module>_pb2_grpc.py` (needs the dev
extra's grpcio-tools). The generated files are committed; a test checks they are current.

- seqserve/v1/: seqserve's own API, from protos/seqserve/v1/seqserve.proto.
- seqserve/oip/: the Open Inference Protocol (KServe v2, package `inference`), from
  protos/inference/grpc_service.proto, mapped into seqserve/oip/ so that no top-level `inference`
  package is needed. Its descriptors live in a descriptor pool of their own instead of protobuf's
  default pool: tritonclient and kserve define the same `inference.*` names in the default pool, two
  definitions of one name cannot share a pool, and tests and tools import both (see PRIVATE_POOL).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_POOL = "_descriptor_pool.Default()"
PRIVATE_POOL = "_descriptor_pool.DescriptorPool()"


@dataclass(frozen=True)
class Api:
    proto: str  # under protos/
    package_dir: str  # where its Python modules go, relative to the output root
    private_pool: bool = False  # build its descriptors in a pool of their own

    @property
    def module(self) -> str:
        return Path(self.proto).stem + "_pb2"

    @property
    def files(self) -> list[str]:
        """The generated files, relative to the output root."""
        return [f"{self.package_dir}/{self.module}{suffix}" for suffix in (".py", ".pyi", "_grpc.py")]


APIS = [
    Api("seqserve/v1/seqserve.proto", "seqserve/v1"),
    Api("inference/grpc_service.proto", "seqserve/oip", private_pool=True),
]


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev-only dependency

    out.mkdir(parents=True, exist_ok=True)
    for api in APIS:
        proto = PROTO_ROOT / api.proto
        args = [
            "protoc",
            f"-I{api.package_dir}={proto.parent}",  # the import path names the Python package
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {api.proto}")
        if api.private_pool:
            use_private_pool(out / api.files[0])


def use_private_pool(module: Path) -> None:
    """Make a generated `_pb2.py` add its file to a new descriptor pool instead of the default one."""
    code = module.read_text()
    if code.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"{module}: expected one {DEFAULT_POOL} in protoc's output")
    module.write_text(code.replace(DEFAULT_POOL, PRIVATE_POOL))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository root)")
    generate(p.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
