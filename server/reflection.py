"""Server reflection under both names tools ask for: `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

grpcio-reflection (1.85) ships only the v1alpha service. The v1 protocol is the same messages
under a new package name (grpc/reflection/v1/reflection.proto was copied from v1alpha), so the
one servicer answers both: its v1alpha messages are byte-for-byte what a v1 client sends and expects.
Listed services must be describable (Buf and grpcurl describe every one they list), so the pool also
holds the v1 file, made from v1alpha's by renaming its package.

The servicer reads one pool holding every served file: the Open Inference Protocol's generated code
lives in a pool of its own (tritonclient defines the same `inference.*` names in the default pool),
so the default pool alone could list that service but not describe it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_FILE = cast(FileDescriptor, reflection_pb2.DESCRIPTOR)  # typed as upb's class by the stubs


def merged_pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A pool with `files` and everything they import, whatever pools they came from."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file under the v1 package name."""
    proto = descriptor_pb2.FileDescriptorProto()
    V1ALPHA_FILE.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{V1_PACKAGE}."

    def renamed(type_name: str) -> str:
        return new + type_name.removeprefix(old)

    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.ClearField("options")  # v1alpha's language options (Java package and the like)
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # a message field (scalars have none)
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = renamed(method.input_type), renamed(method.output_type)
    return proto


def enable_reflection(service_names: Iterable[str], files: Iterable[FileDescriptor], server: grpc.aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) listing `service_names` and the reflection services themselves,
    describing them from `files` (the .proto files that define them)."""
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    pool = merged_pool((*files, V1ALPHA_FILE))
    pool.Add(v1_reflection_file())
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (reflection.SERVICE_NAME, V1_SERVICE_NAME):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
