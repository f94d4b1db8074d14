"""seqserve.v1 (`seqserve.v1.SeqserveService`), beside the Open Inference Protocol (server/oip/), on the same
port and the same batchers: service.py (the servicer and its registration) -> dataplane.py (transport-free:
models, Encode, StreamSequence) -> the model's Batcher; codec.py (messages <-> numpy, the v1 checks and
answer-size estimate) and packed.py (the packed form). Checks both protocols share: server/validation.py.
"""
