"""seqserve's gRPC service on onnxruntime: `python -m server --model-repository DIR --port N`.

A call's way through, the same for both protocols (seqserve.v1 in v1/, the Open Inference Protocol in oip/):

    admission.py   who may call (drain, bearer token), the replica's name      -- interceptor
    calls.py       time, count, status code (errors.py's status_of), stream cap -- interceptor
    wire.py        request bytes that do not decode are answered, never raised
    v1/service.py  |  oip/service.py     the servicer: protobuf in, protobuf out
    v1/codec.py, v1/packed.py  |  oip/tensors.py     decode messages into numpy (and encode answers)
    validation.py  the checks both share: counts, lengths, NaN/Inf, the answer's size
    v1/dataplane.py  |  oip/plane.py     the request's meaning: which model, which outputs, streams' state
    streams.py     the bounded stream loop of EncodeStream and ModelStreamInfer (answers, and their bytes)
    batching/      the model's dynamic batcher: rounds, grouping, scheduling
    runtime.py     the onnxruntime sessions (seqserve.inference, the inference core)
"""
