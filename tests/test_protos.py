"""The committed generated code is exactly what `python -m seqserve.protogen` produces from protos/."""

from pathlib import Path

from seqserve.protogen import ROOT, generate

GENERATED = ["seqserve_pb2.py", "seqserve_pb2.pyi", "seqserve_pb2_grpc.py"]


def test_generated_code_is_current(tmp_path: Path):
    generate(tmp_path)
    for name in GENERATED:
        fresh = (tmp_path / "seqserve" / "v1" / name).read_text()
        committed = (ROOT / "seqserve" / "v1" / name).read_text()
        assert fresh == committed, f"seqserve/v1/{name} is stale: run `python -m seqserve.protogen`"


def test_api_package_and_service():
    from seqserve.v1 import seqserve_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["SeqserveService"]
    assert pb.DESCRIPTOR.package == "seqserve.v1"
    assert {m.name for m in service.methods} == {
        "ListModels", "GetModel", "Encode", "EncodeStream", "StreamSequence"
    }
    stream = service.methods_by_name["StreamSequence"]
    assert stream.client_streaming and stream.server_streaming
