"""Server-Sent Events both ways: frames out of a Flask view, events out of a byte stream.

The wire format (WHATWG HTML, "Server-sent events"): UTF-8 text, one field per
line (`data:`, `event:`, `id:`, `retry:`), a line starting with `:` is a comment,
and a blank line dispatches the event the lines before it built.

Heartbeats, one story for every stream in the kit: a stream that can go quiet writes
the comment `: ping` when it has written nothing for its heartbeat. The ping keeps
proxies and load balancers from cutting an idle connection, and it is the only way a
WSGI server learns that the client left: it notices when a write fails. What differs
is only who keeps the time. One stream waits with a timeout (drain() below for a
push producer's mailbox, pings() for a generator's sleep); thousands of streams that share one source are woken together
by it, so none needs a timer of its own (fanout.Ringer; the relay's watch).
"""
import queue
import re
import time
from typing import NamedTuple

from flask import Response

MIMETYPE = "text/event-stream"  # Flask adds "; charset=utf-8" to text/* types
HEADERS = {
    # A live stream must never be served from a cache, nor stored by one.
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless the response itself says no.
    "X-Accel-Buffering": "no",
}
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the three line ends the format accepts


def format_event(data, event=None, id=None, retry=None):
    """One event as wire text. `data` may hold newlines: each line gets its own
    `data:` field, so no payload can start a field or an event of its own."""
    lines = []
    if event is not None:
        if event == "error":
            raise ValueError("'error' is EventSource's own connection-error event")
        lines.append(f"event: {_one_line('event', event)}")
    if id is not None:
        lines.append(f"id: {_one_line('id', id)}")
    if retry is not None:
        if type(retry) is not int or retry < 0:
            raise ValueError(f"retry must be a non-negative int of milliseconds, not {retry!r}")
        lines.append(f"retry: {retry}")
    if data is None:
        # A frame without data is never dispatched: allowed only to set retry.
        if event is not None or id is not None or retry is None:
            raise ValueError("an event without data is silently dropped by browsers")
    else:
        lines.extend(f"data: {line}" for line in LINE_BREAK.split(str(data)))
    return "\n".join(lines) + "\n\n"


def _one_line(field, value):
    value = str(value)
    if LINE_BREAK.search(value) or "\0" in value:
        raise ValueError(f"{field} must be one line without NUL, got {value!r}")
    return value


def comment(text=""):
    """A comment frame such as ': ping': browsers ignore it, proxies see traffic."""
    return "".join(f": {line}\n" for line in LINE_BREAK.split(text)) + "\n"


PING = comment("ping")
PING_BYTES = PING.encode()  # for streams whose frames are bytes: event_stream(encoded=True)


def event_stream(frames, status=200, encoded=False):
    """The streaming response every demo returns: SSE type and headers, sent
    before the first frame, and each frame written as soon as it is yielded.

    direct_passthrough hands the generator straight to the WSGI server, so the
    Response object is freed at once instead of living as long as the stream.
    Frames may be str; `encoded=True` says they are bytes already (the fan-out
    path encodes a frame once for all its subscribers) and skips a layer.
    """
    body = frames if encoded else _as_bytes(frames)
    return Response(body, status, mimetype=MIMETYPE, headers=HEADERS, direct_passthrough=True)


def _as_bytes(frames):
    try:
        for frame in frames:
            yield frame.encode() if isinstance(frame, str) else frame
    finally:  # the server closes us when the client has gone: pass it on
        if hasattr(frames, "close"):
            frames.close()


def pings(seconds, heartbeat=None):
    """Wait `seconds`, yielding a ': ping' every `heartbeat` seconds meanwhile (None:
    a truly silent wait). For a generator that keeps its own time between events."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if heartbeat is None or left <= heartbeat:
            time.sleep(left)
            return
        time.sleep(heartbeat)
        yield PING


def drain(mailbox, heartbeat):
    """Yield the frames put into `mailbox` (a queue.Queue) until None arrives,
    and a ': ping' whenever `heartbeat` seconds pass without one. The ping keeps
    idle proxies from cutting the stream, and a write is the only way a WSGI
    server notices that the client has gone."""
    while True:
        try:
            frame = mailbox.get(timeout=heartbeat)
        except queue.Empty:
            yield PING
            continue
        if frame is None:
            return
        yield frame


class Event(NamedTuple):  # a tuple: cheap to make, one per upstream token
    data: str
    event: str = "message"
    id: str = ""


class EventParser:
    """Incremental SSE parser: feed() it bytes as they arrive, get whole events.

    Lines are cut on bytes and decoded whole, so a character split across two
    reads comes out intact; only CR, LF and CRLF end a line (never U+2028 or
    the other breaks str.splitlines() knows); an event is dispatched only by
    its closing blank line. A line or an event longer than `limit` bytes is a
    ValueError: an upstream that never ends a line must not fill our memory.
    """

    def __init__(self, limit=1 << 20):
        self.limit, self._line_size, self._data_size = limit, 0, 0  # bytes held meanwhile
        self._pending = []  # pieces of a line not yet ended, joined once it ends
        self._skip_lf = False  # the last chunk ended in CR: a leading LF is its pair
        self._first_line = True
        self._data, self._event, self._id = [], "", ""
        self.last_event_id = ""  # as EventSource's: set when an event is dispatched
        self.retry = None  # milliseconds, once the stream has set it

    def feed(self, chunk):
        """Take the next bytes of the stream; return the events they complete."""
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        last = chunk[-1:]
        self._skip_lf = last == b"\r"
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)  # no line end yet: keep it, copy nothing
            self._line_size += len(chunk)
            self._check()
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
        lines = chunk.splitlines()  # on bytes, exactly SSE's line ends: CR, LF, CRLF
        # Bytes after the last line end start the next line.
        self._pending = [] if last in (b"\n", b"\r") else [lines.pop()]
        self._line_size = len(self._pending[0]) if self._pending else 0
        events = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                events.append(event)
        self._check()
        return events

    def _check(self):
        if self._line_size + self._data_size > self.limit:
            raise ValueError(f"an SSE line or event longer than {self.limit} bytes")

    def _line(self, raw):
        if self._first_line:
            self._first_line = False
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a leading BOM is not content
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if colon and not name:
            return None  # a comment
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None  # unknown fields are ignored, as the spec says

    def _dispatch(self):
        # The id becomes the last event id only now, with its blank line (WHATWG
        # "dispatch the event", step 1), so a cut-off event is asked for again.
        self.last_event_id = self._id
        data, event = self._data, self._event
        self._data, self._event, self._data_size = [], "", 0
        if not data:
            return None  # nothing to dispatch: browsers fire no event here either
        return Event("\n".join(data), event or "message", self._id)


def iter_events(chunks):
    """Events from an iterable of byte chunks, e.g. requests' iter_content(None)."""
    parser = EventParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
