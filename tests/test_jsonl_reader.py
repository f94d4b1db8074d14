"""The JSON Lines reader's two paths read every line alike: simdjson's (steps straight into arrays,
`Records` blocks) and the exact one (orjson, then the json module; a Record or BadRecord per line).

Hypothesis writes files of lines that are good, odd or broken in the ways that differ between the
parsers (nesting simdjson flattens, repeated keys, NaN literals, numbers past int64 or float64,
ragged steps, ids and labels of every JSON type, brackets inside strings, invalid UTF-8, blank lines)
and checks that both paths give the same records: index, id, label, line, and steps bit for bit.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqserve.batch import readers
from seqserve.batch.readers import Fields, each_record, read_jsonl
from seqserve.batch.records import BadRecord, Record, Records

pytest.importorskip("simdjson", reason="pysimdjson (the batch extra) is not installed: no fast path to compare")

FEATURES = 3
numbers = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False),  # float64 text, rounded to float32
    st.integers(-1000, 1000),
    st.integers(-(2**70), 2**70),  # past int64 and uint64 too
    st.sampled_from([0.0, -0.0, 1e39, -1e39, 1e-46, 3.4028235e38]),  # float32 overflow and underflow
)
step = st.lists(numbers, min_size=FEATURES, max_size=FEATURES)
good_steps = st.lists(step, min_size=1, max_size=6)
odd_steps = st.one_of(
    st.just([]),
    st.just([[]]),
    st.lists(st.lists(numbers, min_size=1, max_size=4), min_size=2, max_size=4),  # ragged, often
    good_steps.map(lambda s: s[:-1] + [s[-1][:-1] + [[s[-1][-1]]]]),  # one value nested one deeper
    good_steps.map(lambda s: s + [s[0][0]]),  # a number where a step belongs
    good_steps.map(lambda s: s[:-1] + [s[-1][:-1] + [None]]),
    good_steps.map(lambda s: s[:-1] + [s[-1][:-1] + [True]]),
    good_steps.map(lambda s: s[:-1] + [s[-1][:-1] + ["1"]]),
    st.sampled_from([None, "steps", 3, {"a": [[1, 2, 3]]}]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(allow_nan=False),
                    st.text(max_size=5), st.sampled_from(["", "[", "a]b", "é", "\u2028"]))
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=2), scalars, max_size=2))


@st.composite
def lines(draw) -> bytes:
    obj = {}
    if draw(st.booleans()):
        obj["id"] = draw(st.one_of(st.text(max_size=6), st.text(max_size=6), st.integers(-(2**64), 2**64), values))
    obj["steps"] = draw(st.one_of(good_steps, good_steps, good_steps, odd_steps))
    if draw(st.booleans()):
        obj["label"] = draw(st.one_of(scalars, scalars, values))
    if draw(st.integers(0, 3)) == 0:
        obj["meta"] = draw(values)
    keys = draw(st.permutations(list(obj)))
    text = json.dumps({k: obj[k] for k in keys}, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    mutation = draw(st.sampled_from(["none"] * 30 + ["repeat", "nan", "bigfloat", "truncate", "array", "bytes",
                                                    "blank", "two", "utf8"]))
    if mutation == "repeat" and len(keys) > 0:  # a key twice: parsers keep different ones
        key = draw(st.sampled_from(keys))
        text = text[:-1] + f', {json.dumps(key)}: {json.dumps(draw(st.one_of(good_steps, values)))}' + "}"
    elif mutation == "nan":
        text = text.replace("0.0", "NaN", 1).replace("1", "Infinity", 1)
    elif mutation == "bigfloat":
        text = text.replace("1", "1e400", 1)
    elif mutation == "truncate":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif mutation == "array":
        text = f"[{text}]"
    elif mutation == "blank":
        text = draw(st.sampled_from(["", "   ", "\t"]))
    elif mutation == "two":
        text = f"{text} {text}"
    raw = text.encode()
    if mutation == "utf8":
        raw = raw.replace(b'"', b'"\xff', 1)
    elif mutation == "bytes":
        raw = draw(st.binary(max_size=20)).replace(b"\n", b"")
    return raw


def read_both(raw_lines: list[bytes], folder: Path) -> tuple[list, list]:
    path = folder / "in.jsonl"
    path.write_bytes(b"\n".join(raw_lines) + b"\n")
    fast = list(read_jsonl(path, Fields()))
    simdjson, readers.simdjson = readers.simdjson, None
    try:
        exact = list(read_jsonl(path, Fields()))
    finally:
        readers.simdjson = simdjson
    return fast, exact


def as_tuple(item: Record | BadRecord) -> tuple:
    if isinstance(item, BadRecord):
        return "bad", item.index, item.id, item.reason, item.line
    assert item.steps.dtype == np.float32
    return ("record", item.index, item.id, item.label, item.line, item.steps.shape,
            item.steps.view(np.uint32).tobytes())  # bit for bit: -0.0, the rounding to float32


@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(), min_size=1, max_size=12))
def test_fast_and_exact_paths_read_every_line_alike(raw_lines):
    with tempfile.TemporaryDirectory() as tmp:
        fast, exact = read_both(raw_lines, Path(tmp))
    assert all(not isinstance(item, Records) for item in exact)
    assert [as_tuple(i) for i in each_record(fast)] == [as_tuple(i) for i in exact]


def test_clean_lines_come_as_blocks_and_odd_ones_keep_their_place(tmp_path):
    """Good lines of one width are one block; a line only the exact path reads (NaN here) and a line of
    another width split it, in input order, so the duplicate check sees ids in the order of the file."""
    good = [json.dumps({"id": f"r{i}", "steps": [[i, 1.5, -2]] * (1 + i % 3), "label": i % 2}) for i in range(6)]
    odd = '{"id": "n", "steps": [[NaN, 1, 2]]}'
    wide = json.dumps({"id": "w", "steps": [[1, 2, 3, 4]]})
    fast, exact = read_both([s.encode() for s in good[:3] + [odd] + good[3:5] + [wide] + good[5:]], tmp_path)
    assert [(type(i).__name__, len(i) if isinstance(i, Records) else i.id) for i in fast] == \
        [("Records", 3), ("Record", "n"), ("Records", 2), ("Records", 1), ("Records", 1)]
    assert [as_tuple(i) for i in each_record(fast)] == [as_tuple(i) for i in exact]
    block = fast[0]
    assert block.lines == [1, 2, 3] and block.labels == ["0", "1", "0"]
    assert math.isnan(exact[3].steps[0, 0])


def test_lines_no_parser_reads_are_bad_records_and_odd_field_names_read_alike(tmp_path):
    """A line nested deeper than any parser goes is a BadRecord, and reading goes on; field names simdjson
    would look up only in part (a NUL in them) are read by the exact path."""
    deep = b'{"steps": [[1]], "m": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}"
    fast, exact = read_both([deep, b'{"steps": [[1, 2, 3]]}'], tmp_path)
    assert [as_tuple(i) for i in each_record(fast)] == [as_tuple(i) for i in exact]
    assert isinstance(exact[0], BadRecord) and "nested too deeply" in exact[0].reason
    assert isinstance(exact[1], Record)

    path = tmp_path / "fields.jsonl"
    path.write_bytes(b'{"st\\u0000eps": [[1]], "i\\u0000d": "x", "i": "y"}\n')
    fields = Fields(id="i\0d", steps="st\0eps")
    [record] = list(each_record(read_jsonl(path, fields)))
    assert (record.id, record.steps.tolist()) == ("x", [[1.0]])
