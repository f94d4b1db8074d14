"""The committed generated code is exactly what `python -m seqserve.protogen` produces from protos/, and
protos/inference/ is the published Open Inference Protocol, name for name and number for number."""

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor

from seqserve.protogen import APIS, ROOT, generate


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("protogen")
    generate(out)
    return out


@pytest.mark.parametrize("name", [f for api in APIS for f in api.files])
def test_generated_code_is_current(fresh: Path, name: str):
    stale = f"{name} is stale: run `python -m seqserve.protogen`"
    assert (fresh / name).read_text() == (ROOT / name).read_text(), stale


def test_api_package_and_service():
    from seqserve.v1 import seqserve_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["SeqserveService"]
    assert pb.DESCRIPTOR.package == "seqserve.v1"
    assert {m.name for m in service.methods} == {
        "ListModels", "GetModel", "Encode", "EncodeStream", "StreamSequence"
    }
    stream = service.methods_by_name["StreamSequence"]
    assert stream.client_streaming and stream.server_streaming


def file_proto(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


def wire_view(message: descriptor_pb2.DescriptorProto) -> descriptor_pb2.DescriptorProto:
    """A message as the wire and the generated code see it: names, numbers, types, labels, oneofs."""
    return descriptor_pb2.DescriptorProto(
        name=message.name, options=message.options, oneof_decl=message.oneof_decl,
        field=[descriptor_pb2.FieldDescriptorProto(
            name=f.name, number=f.number, label=f.label, type=f.type, type_name=f.type_name,
            oneof_index=f.oneof_index if f.HasField("oneof_index") else None, json_name=f.json_name)
            for f in message.field],
        nested_type=[wire_view(n) for n in message.nested_type],
    )


def test_inference_proto_matches_the_published_protocol():
    """Every message and method declared in protos/inference/ is exactly the published one (as compiled
    into tritonclient); methods left out are the extensions seqserve does not serve."""
    from tritonclient.grpc import service_pb2 as published

    from seqserve.oip import grpc_service_pb2 as ours

    mine, theirs = file_proto(ours.DESCRIPTOR), file_proto(published.DESCRIPTOR)
    assert mine.package == theirs.package == "inference"
    reference = {m.name: m for m in theirs.message_type}
    for message in mine.message_type:
        assert wire_view(message) == wire_view(reference[message.name]), message.name
    [service], [published_service] = mine.service, theirs.service
    assert service.name == published_service.name == "GRPCInferenceService"
    published_methods = {m.name: m for m in published_service.method}
    for method in service.method:
        published_method = published_methods[method.name]
        for part in ("input_type", "output_type", "client_streaming", "server_streaming"):
            assert getattr(method, part) == getattr(published_method, part), (method.name, part)
    assert {m.name for m in service.method} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer", "ModelStatistics", "RepositoryIndex",
    }


def test_inference_code_imports_beside_tritonclient():
    """Its descriptors live in their own pool: no clash with tritonclient's `inference.*` in the default one."""
    import tritonclient.grpc  # noqa: F401  (defines inference.* in the default pool)
    from google.protobuf import descriptor_pool

    from seqserve.oip import grpc_service_pb2 as ours

    assert ours.DESCRIPTOR.pool is not descriptor_pool.Default()
    request: Descriptor = ours.ModelInferRequest.DESCRIPTOR
    assert request.full_name == "inference.ModelInferRequest"
