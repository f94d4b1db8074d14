"""The Open Inference Protocol (KServe v2 gRPC, `inference.GRPCInferenceService`) beside seqserve.v1, on
the same port and the same batchers: service.py (the servicer) -> plane.py (transport-free: metadata,
validation, inference) -> the model's Batcher; tensors.py (a model's v2 view and its tensors on the
wire), sequences.py (server-kept state of Triton-style sequences), statistics.py (ModelStatistics).
"""
