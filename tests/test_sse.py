"""The encoder and the parser of streamkit/sse.py, against exact wire text."""
import queue

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamkit import sse
from streamkit.sse import Event, EventParser, format_event


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


PARSER_CASES = [
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
    # str.splitlines() would cut at each of these; bytes.splitlines() and SSE do not.
    ("data: a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2029h\n\n".encode(), [Event("a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2029h")]),
    (b"data: a\r\n\r\n\r\ndata: b\n\r\n", [Event("a"), Event("b")]),
    (b"data: \xe4\xbd\n\n", [Event("\ufffd")]),
    # The examples of the WHATWG HTML standard, "Server-sent events", sections 9.2.1 and 9.2.6:
    (b"data: This is the first message.\n\ndata: This is the second message, it\n"
     b"data: has two lines.\n\ndata: This is the third message.\n\n",
     [Event("This is the first message."), Event("This is the second message, it\nhas two lines."),
      Event("This is the third message.")]),
    (b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
     [Event("73857293", "add"), Event("2153", "remove"), Event("113411", "add")]),
    (b"data: YHOO\ndata: +2\ndata: 10\n\n", [Event("YHOO\n+2\n10")]),
    (b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
     [Event("first event", "message", "1"), Event("second event"), Event(" third event")]),
    (b"data\n\ndata\ndata\n\ndata:", [Event(""), Event("\n")]),
    (b"data:test\n\ndata: test\n\n", [Event("test"), Event("test")]),
]
PARSER_IDS = [
    "LF", "CRLF-no-space", "CR-two-spaces", "multi-line", "type-and-id-carry", "comment",
    "no-closing-blank-line", "no-data-no-dispatch", "field-without-colon", "BOM",
    "id-with-NUL-ignored", "unknown-field", "U+2028-is-not-a-line-end",
    "other-str-line-breaks-are-not-line-ends", "blank-lines-between",
    "invalid-UTF-8-replaced", "whatwg-three-messages", "whatwg-event-types", "whatwg-stock-ticker",
    "whatwg-four-blocks", "whatwg-empty-data", "whatwg-space-after-colon"]


@pytest.mark.parametrize("wire, events", PARSER_CASES, ids=PARSER_IDS)
def test_parser(wire, events):
    # The WHATWG rules, each case whole and then fed one byte at a time.
    assert EventParser().feed(wire) == events
    parser = EventParser()
    assert [e for i in range(len(wire)) for e in parser.feed(wire[i:i + 1])] == events


@pytest.mark.parametrize("wire, events", PARSER_CASES, ids=PARSER_IDS)
@given(data=st.data())
def test_parser_in_random_splits(wire, events, data):
    # However the network cuts the bytes, the same events come out.
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=len(wire))))
    parser = EventParser()
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    assert [event for piece in pieces for event in parser.feed(piece)] == events


line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"))
any_event = st.builds(Event, st.lists(line_text, min_size=1, max_size=4).map("\n".join),
                      st.sampled_from(["message", "tick", "add"]), line_text.filter(lambda i: "\0" not in i))


@given(st.lists(any_event, max_size=6), st.sampled_from(["\n", "\r", "\r\n"]),
       st.sampled_from([": ", ":"]), st.booleans(), st.data())
def test_parser_reads_what_any_server_may_write(events, end, colon, comments, data):
    # Any line end, with or without the space, comments in between, any splits.
    def field(name, value):
        return f"{name}{colon}{value}{end}"
    wire = "".join(
        (f": keep-alive{end}" if comments else "") + field("event", e.event) + field("id", e.id)
        + "".join(field("data", line) for line in e.data.split("\n")) + end
        for e in events).encode()

    def read(value):  # written without the space, a value's own leading space is taken as it
        return value[1:] if colon == ":" and value.startswith(" ") else value
    expected = [Event("\n".join(map(read, e.data.split("\n"))), e.event, read(e.id)) for e in events]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=20)))
    parser = EventParser()
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    assert [event for piece in pieces for event in parser.feed(piece)] == expected
    assert parser.last_event_id == (expected[-1].id if events else "")


def test_last_event_id_waits_for_the_blank_line():
    """Regression: the parser used to take an `id:` as the last event id as soon as
    it read the line, before its event was dispatched. A stream cut between the
    two then resumed *after* an event the client never got (EventSource, and
    WHATWG step 1 of "dispatch the event", set it only on the blank line).
    Seen with: curl -N -H "Last-Event-ID: $(the id our parser reported)" …/counter/stream
    """
    parser = EventParser()
    assert parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b") == [Event("a", "message", "1")]
    assert parser.last_event_id == "1"  # event 2 never arrived: ask for it again
    assert parser.feed(b"\n\n") == [Event("b", "message", "2")]
    assert parser.last_event_id == "2"
    parser.feed(b"id: 3\n\n")  # an id-only block sets it without firing an event
    assert parser.last_event_id == "3"


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


@pytest.mark.parametrize("pieces", [
    [b"data: " + b"x" * 700] * 3,  # one line that never ends, in three reads
    [b"data: " + b"x" * 600 + b"\n"] * 3,  # data lines with no blank line to dispatch them
], ids=["endless-line", "endless-event"])
def test_a_line_or_event_past_the_limit_is_refused(pieces):
    # An upstream that never ends a line or an event must not fill the relay's memory.
    parser = EventParser(limit=1500)
    with pytest.raises(ValueError, match="longer than 1500 bytes"):
        for piece in pieces:
            parser.feed(piece)


def test_the_limit_counts_each_event_afresh():
    parser = EventParser(limit=1500)
    for _ in range(10):  # 10 events of 1 KB each: every one under the limit
        assert [event.data for event in parser.feed(b"data: " + b"y" * 1000 + b"\n\n")] == ["y" * 1000]
