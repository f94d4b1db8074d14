"""The Open Inference Protocol (KServe v2, proto package `inference`): generated code, from
protos/inference/grpc_service.proto by `python -m seqserve.protogen`. Never edit by hand.

Its descriptors live in a pool of their own, so it imports beside tritonclient or kserve (whose
generated code defines the same `inference.*` names in protobuf's default pool).
"""
