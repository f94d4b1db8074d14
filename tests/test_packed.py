"""The packed form of Encode (many sequences in one tensor, one tensor per output back): the same
numbers as the per-sequence form, and the same validation."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from reference import random_sequences
from rpc import raises_status
from servers import REPOSITORY, threaded_server

from seqserve.client import EncodeResult, SeqserveClient, encode_request, results_of
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

ALL = {"jv_bilstm_attn": ["outputs", "hidden", "attention", "logits"],
       "jv_bigru_attn": ["outputs", "hidden", "attention", "logits"],
       "jv_lstm_stream": ["outputs", "hidden", "logits", "step_logits"]}
TENSORS = ("probabilities", "logits", "outputs", "h_n", "c_n", "attention", "context", "step_logits")


@pytest.fixture(scope="module")
def server():
    with threaded_server(REPOSITORY, max_sequences_per_request=16, max_sequence_length=100) as s:
        yield s


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SeqserveServiceStub(channel)


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    return random_sequences(6, shortest=7)  # unsorted lengths


def same(a: EncodeResult, b: EncodeResult) -> None:
    assert (a.id, a.label, a.label_index) == (b.id, b.label, b.label_index)
    for name in TENSORS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("model", sorted(ALL))
def test_every_combination_of_forms_gives_identical_numbers(server, stub, sequences, model):
    """Packed or not, in either direction: one batch, so bit-for-bit the same answers."""
    batcher = server.sync(lambda: server.server.registry.get(model).batcher)
    answers = {}
    for packed_in in (False, True):
        for packed_out in (False, True):
            request = encode_request(model, sequences, ids=list("abcdef"), outputs=ALL[model], packed=packed_in)
            request.packed_results = packed_out
            answers[packed_in, packed_out] = results_of(stub.Encode(request, timeout=30))
    reference = answers[False, False]
    assert [r.id for r in reference] == list("abcdef")
    for results in answers.values():
        for got, want in zip(results, reference, strict=True):
            same(got, want)
    assert batcher.failure is None
    assert reference[1].outputs.shape[0] == len(sequences[1])


def test_the_client_library_sends_packed_requests(server, sequences):
    with SeqserveClient(server.target) as client:
        results = client.encode("jv_bilstm_attn", sequences, outputs=["outputs", "attention"])
    assert [r.id for r in results] == [str(i) for i in range(len(sequences))]
    assert [len(r.outputs) for r in results] == [len(s) for s in sequences]


def packed_request(steps: np.ndarray, lengths: list[int], **fields) -> pb.EncodeRequest:
    request = pb.EncodeRequest(model="jv_bilstm_attn", packed=pb.PackedSequences(lengths=lengths, **fields))
    to_tensor(steps, request.packed.steps)
    return request


BAD = {
    "lengths do not add up": (np.ones((10, 12), np.float32), [4, 5], {}, grpc.StatusCode.INVALID_ARGUMENT,
                              ["packed.steps", "10 steps", "add up to 9"]),
    "empty sequence": (np.ones((4, 12), np.float32), [4, 0], {}, grpc.StatusCode.INVALID_ARGUMENT,
                       ["packed.lengths[1]", "at least 1 step"]),
    "wrong features": (np.ones((4, 11), np.float32), [4], {}, grpc.StatusCode.INVALID_ARGUMENT,
                       ["packed.steps", "[sum of lengths, 12]"]),
    "NaN in the second sequence": (np.vstack([np.ones((3, 12)), np.full((2, 12), np.nan)]).astype(np.float32),
                                   [3, 2], {}, grpc.StatusCode.INVALID_ARGUMENT,
                                   ["packed.steps", "sequence 1", "first at step 0"]),
    "ids do not match": (np.ones((4, 12), np.float32), [2, 2], {"ids": ["only one"]},
                         grpc.StatusCode.INVALID_ARGUMENT, ["packed.ids", "1 ids for 2 sequences"]),
    "too many sequences": (np.ones((17, 12), np.float32), [1] * 17, {}, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           ["packed.lengths", "17", "max_sequences_per_request"]),
    "too long": (np.ones((101, 12), np.float32), [101], {}, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 ["packed.lengths[0]", "101", "max_sequence_length"]),
    "no sequences": (np.ones((0, 12), np.float32), [], {}, grpc.StatusCode.INVALID_ARGUMENT,
                     ["packed.lengths", "no sequences"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_packed_requests_name_the_field(stub, case):
    steps, lengths, fields, code, fragments = BAD[case]
    with raises_status(code, *fragments):
        stub.Encode(packed_request(steps, lengths, **fields), timeout=10)


def test_both_forms_at_once_is_refused(stub):
    request = packed_request(np.ones((3, 12), np.float32), [3])
    to_tensor(np.ones((3, 12), np.float32), request.sequences.add().steps)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not both"):
        stub.Encode(request, timeout=10)
