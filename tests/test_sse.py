"""The encoder and the parser of demos/sse.py, against exact wire text."""
import queue

import pytest
from hypothesis import given
from hypothesis import strategies as st

from demos import sse
from demos.sse import Event, EventParser, format_event


@pytest.mark.parametrize("kwargs, wire", [
    ({"data": "hello"}, "data: hello\n\n"),
    ({"data": "a\nb"}, "data: a\ndata: b\n\n"),
    ({"data": "a\r\nb\rc"}, "data: a\ndata: b\ndata: c\n\n"),
    ({"data": ""}, "data: \n\n"),
    ({"data": "x\n"}, "data: x\ndata: \n\n"),
    ({"data": 1.5}, "data: 1.5\n\n"),
    ({"data": "x", "event": "tick", "id": 0}, "event: tick\nid: 0\ndata: x\n\n"),
    ({"data": "x", "id": "", "retry": 0}, "id: \nretry: 0\ndata: x\n\n"),
    ({"data": None, "retry": 2000}, "retry: 2000\n\n"),
], ids=["plain", "LF", "CRLF-and-CR", "empty", "trailing-newline", "number",
        "event-and-id-0", "empty-id-retry-0", "retry-only"])
def test_format_event(kwargs, wire):
    # Each line of data becomes its own data: field; 0 and "" are values, not absent.
    assert format_event(**kwargs) == wire


@pytest.mark.parametrize("kwargs", [
    {"data": "x", "id": "1\n2"},
    {"data": "x", "id": "1\r"},
    {"data": "x", "id": "a\0b"},
    {"data": "x", "event": "tick\ndata: forged"},
    {"data": "x", "event": "error"},
    {"data": "x", "retry": "2000"},
    {"data": "x", "retry": 1.5},
    {"data": "x", "retry": True},
    {"data": "x", "retry": -1},
    {"data": None, "event": "end"},
    {"data": None},
], ids=["id-LF", "id-CR", "id-NUL", "event-injection", "event-named-error",
        "retry-str", "retry-float", "retry-bool", "retry-negative", "event-without-data", "nothing"])
def test_format_event_refuses(kwargs):
    # A field that could break the framing, or an event the browser would drop, is an error.
    with pytest.raises(ValueError):
        format_event(**kwargs)


def test_payload_cannot_inject_an_event():
    # A payload that looks like frames stays one event with the payload as its data.
    payload = "hi\n\nevent: admin\ndata: forged\r\nid: 99\n\n"
    events = EventParser().feed(format_event(payload).encode())
    assert events == [Event(data="hi\n\nevent: admin\ndata: forged\nid: 99\n\n")]


@given(st.text())
def test_round_trip(text):
    # Whatever the data, the parser gives it back (line ends normalised to LF).
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert EventParser().feed(format_event(text, id=7).encode()) == [Event(normalised, "message", "7")]


def test_comment_and_ping():
    assert sse.comment("ping") == ": ping\n\n"
    assert sse.comment("a\nb") == ": a\n: b\n\n"
    assert EventParser().feed(sse.PING.encode()) == []


@pytest.mark.parametrize("wire, events", [
    (b"data: a\n\n", [Event("a")]),
    (b"data:a\r\n\r\n", [Event("a")]),
    (b"data:  two spaces\r\r", [Event(" two spaces")]),
    (b"data: 1\ndata: 2\n\n", [Event("1\n2")]),
    (b"event: tick\nid: 3\ndata: x\n\ndata: y\n\n", [Event("x", "tick", "3"), Event("y", "message", "3")]),
    (b": comment\ndata: a\n\n", [Event("a")]),
    (b"data: a\n", []),
    (b"event: end\n\n", []),
    (b"data\n\n", [Event("")]),
    (b"\xef\xbb\xbfdata: bom\n\n", [Event("bom")]),
    (b"id: a\0b\ndata: x\n\n", [Event("x")]),
    (b"foo: bar\ndata: x\n\n", [Event("x")]),
    ("data: caf\u00e9 \u2028 \u4f60\u597d\n\n".encode(), [Event("caf\u00e9 \u2028 \u4f60\u597d")]),
], ids=["LF", "CRLF-no-space", "CR-two-spaces", "multi-line", "type-and-id-carry",
        "comment", "no-closing-blank-line", "no-data-no-dispatch", "field-without-colon",
        "BOM", "id-with-NUL-ignored", "unknown-field", "U+2028-is-not-a-line-end"])
def test_parser(wire, events):
    # The WHATWG rules, each case whole and then fed one byte at a time.
    assert EventParser().feed(wire) == events
    parser = EventParser()
    assert [e for i in range(len(wire)) for e in parser.feed(wire[i:i + 1])] == events


def test_parser_retry_and_last_event_id():
    parser = EventParser()
    parser.feed(b"retry: 1500\nretry: soon\nid: 5\ndata: x\n\n")
    assert (parser.retry, parser.last_event_id) == (1500, "5")


def test_parser_crlf_split_across_reads():
    # A CR ending one read and its LF starting the next are one line end, not two.
    parser = EventParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [Event("a")]
    assert parser.feed(b"\ndata: b\n\n") == [Event("b")]


def test_drain_pings_then_ends():
    # Silence longer than the heartbeat becomes ': ping'; None ends the stream.
    mailbox = queue.Queue()
    frames = sse.drain(mailbox, heartbeat=0.01)
    assert next(frames) == sse.PING
    mailbox.put("data: x\n\n")
    mailbox.put(None)
    assert list(frames) == ["data: x\n\n"]
