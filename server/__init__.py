"""seqserve's gRPC service on onnxruntime: `python -m server --model-repository DIR --port N`."""
