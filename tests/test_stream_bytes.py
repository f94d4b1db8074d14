"""The byte bound of streamed answers (--max-stream-unsent-bytes, --max-process-unsent-bytes): a client that
stops reading an EncodeStream of big answers holds at most that many bytes of answers in the server, per
stream and for all streams together; it is waited for (not failed), and gets every answer once it reads."""

from __future__ import annotations

import time

import grpc
import numpy as np
from servers import REPOSITORY, threaded_server, wait_until

from seqserve.client import encode_request
from seqserve.server.v1.codec import AnswerSize
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

MODEL = "jv_bilstm_attn"
STEPS = 500  # with OUTPUT_OUTPUTS: an answer of ~256 kB
SENT = 24  # requests per stream, far more than the bounds hold


def answer_bound(server) -> int:
    """The server's estimate of one answer's bytes (what each request holds until it is sent)."""
    model = server.server.registry.get(MODEL)
    size = AnswerSize.of(model.runtime.arch, frozenset({pb.OUTPUT_OUTPUTS}), model.runtime.version.class_labels, MODEL)
    return size.encode_response([STEPS], [len(b"0")])


def unread_stream(stub: pb_grpc.SeqserveServiceStub, tag: str):
    request = encode_request(MODEL, [np.ones((STEPS, 12), np.float32)], outputs=["outputs"])
    return stub.EncodeStream(iter(pb.EncodeStreamRequest(request_id=f"{tag}{i}", request=request)
                                  for i in range(SENT)), timeout=120)


def test_a_client_that_stops_reading_holds_at_most_the_byte_bounds():
    stream_bound, process_bound = 1024 * 1024, 1536 * 1024  # four answers a stream, six in all
    with threaded_server(REPOSITORY, max_stream_unsent_bytes=stream_bound,
                         max_process_unsent_bytes=process_bound) as s:
        one = answer_bound(s)
        assert 2 * one <= stream_bound < process_bound < 2 * stream_bound  # the process's bound binds first
        budget = s.server.unsent
        # No BDP probing: the client's receive window stays small, so unread answers stay in the server.
        channel = grpc.insecure_channel(s.target, options=[("grpc.http2.bdp_probe", 0)])
        stub = pb_grpc.SeqserveServiceStub(channel)
        first, second = unread_stream(stub, "a"), unread_stream(stub, "b")
        wait_until(lambda: s.sync(lambda: budget.held) > stream_bound)  # both streams hold answers
        time.sleep(1.0)  # time to read more requests, were reading not held back
        held, peak = s.sync(lambda: (budget.held, budget.peak))
        assert stream_bound < held <= peak <= process_bound, (held, peak, process_bound)
        gauge = s.server.metrics.registry.get_sample_value("seqserve_stream_unsent_bytes")
        assert gauge == held

        answers = list(first) + list(second)  # the client reads: both streams finish, nothing failed
        assert len(answers) == 2 * SENT
        assert not any(answer.HasField("error") for answer in answers)
        assert s.sync(lambda: budget.peak) <= process_bound
        wait_until(lambda: s.sync(lambda: budget.held) == 0)
        channel.close()


def test_one_stream_holds_at_most_its_own_bound():
    stream_bound = 1024 * 1024
    with threaded_server(REPOSITORY, max_stream_unsent_bytes=stream_bound) as s:
        one = answer_bound(s)
        budget = s.server.unsent
        channel = grpc.insecure_channel(s.target, options=[("grpc.http2.bdp_probe", 0)])
        answers = unread_stream(pb_grpc.SeqserveServiceStub(channel), "a")
        wait_until(lambda: s.sync(lambda: budget.held) >= stream_bound - one)
        time.sleep(1.0)
        assert s.sync(lambda: budget.peak) <= stream_bound
        assert len(list(answers)) == SENT
        channel.close()
