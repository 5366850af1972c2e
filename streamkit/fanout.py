"""Fan-out inside one worker: one post, every parked subscriber woken, one encoding.

Board is the core both demos share: items numbered base+1, base+2… (base is 0
unless told: the number is a generation counter), the last `history` of them kept for subscribers that fell
behind, and one shared `threading.Event`, "the bell", swapped for a new one and
set on every post. A subscriber remembers only the number it has seen and parks
on the bell until that number moves. An item is whatever the publisher encoded
once for everyone: demo 5's ticker posts Messages, demo 6's brokers SSE frames.

Under gunicorn's gevent worker (and `python -m demos serve`) threading is
monkey-patched, so the bell is gevent's Event; under `flask run` and the Flask
test client it is the real one. Same code either way.

Fanout adds what demo 6 needs on top: a Board per channel, stream() (one
subscriber's frames) and a ringer for the pings.
"""
import collections
import itertools
import json
import os
import threading
import time

from streamkit import sse

BACKLOG = 256  # frames a channel keeps for a subscriber that fell behind


class Board:
    """Items numbered base+1, base+2…, the last `history` of them kept, and one
    bell that rings for the next. A number below `base` is from before this board
    existed: a subscriber holding one gets everything kept."""

    def __init__(self, history=BACKLOG, base=0):
        self.base = base  # the number before the first item
        self.latest = (base, None)  # (number, item): replaced in one go, read without a lock
        self.recent = collections.deque(maxlen=history)
        self._bell = threading.Event()
        self._lock = threading.RLock()  # one poster at a time; readers mostly skip it

    @property
    def seq(self):
        """The number of the latest item (`base` before the first)."""
        return self.latest[0]

    def post(self, item):
        """Add an item and wake every parked subscriber; return its number."""
        with self._lock:
            n = self.seq + 1
            self.recent.append(item)
            self.latest = (n, item)
            self._ring()
        return n

    def ring(self):
        """Wake every parked subscriber with nothing new: a heartbeat."""
        with self._lock:
            self._ring()

    def _ring(self):
        # New waiters take the new bell; everyone parked on the old one wakes up.
        bell, self._bell = self._bell, threading.Event()
        bell.set()

    def after(self, seen):
        """(the number now seen, the items after number `seen` still kept, oldest
        first). Fewer items than numbers means the oldest were dropped."""
        n, item = self.latest
        if n <= seen:
            return seen, []
        if n == seen + 1:
            return n, [item]  # a subscriber keeping up: no lock, no copy
        with self._lock:
            n, kept = self.seq, min(self.seq - seen, len(self.recent))
            return n, list(itertools.islice(self.recent, len(self.recent) - kept, None))

    def wait(self, seen, timeout=None):
        """Park until something newer than `seen` is posted, the bell rings or
        `timeout` passes; then the same as after()."""
        bell = self._bell  # taken before looking: a post after this rings it
        if self.seq <= seen or self.seq == self.base:  # nothing newer, or nothing yet
            bell.wait(timeout)
        return self.after(seen)


class Ringer:
    """The heartbeat of many streams: one thread per process rings every board it holds
    each `heartbeat` seconds. A subscriber woken with nothing new writes a ping, which
    keeps proxies from cutting its stream and finds a client that left; and no stream
    needs a timer of its own (bench/wakeups.py: a timer per wait nearly doubles the cost
    of a wake-up). It stops when it holds no board, and starts again with the next."""

    def __init__(self, heartbeat):
        self.heartbeat, self._boards, self._lock, self._pid = heartbeat, set(), threading.Lock(), None

    def add(self, board):
        with self._lock:
            self._boards.add(board)
            if self._pid != os.getpid():  # not running in this process (or fork) yet
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="ringer", daemon=True).start()

    def discard(self, board):
        with self._lock:
            self._boards.discard(board)

    def _run(self):
        while True:
            time.sleep(self.heartbeat)
            with self._lock:
                if not self._boards:
                    self._pid = None
                    return
                boards = list(self._boards)
            for board in boards:
                board.ring()  # one that just had a message pings too: harmless


# --- demo 6: a board per channel ----------------------------------------------------

def message_frame(id, message, ts):
    """The event every subscriber of this worker gets: encoded once, as bytes."""
    data = json.dumps({"message": message, "ts": ts, "pid": os.getpid()}, ensure_ascii=False)
    return sse.format_event(data, id=id).encode()


def notice_frame(state, detail):
    """`event: notice`: the broker's own news (Redis lost or back, messages missed)."""
    data = {"state": state, "detail": detail, "ts": round(time.time(), 3), "pid": os.getpid()}
    return sse.format_event(json.dumps(data), event="notice").encode()


class Fanout:
    """This worker's subscribers, by channel: a Board each while anyone listens."""

    def __init__(self, heartbeat=15.0):
        self._boards, self._subscribers, self._lock = {}, collections.Counter(), threading.Lock()
        self.changes = 0  # bumped when a subscriber comes or goes (RedisBroker reports counts)
        self.heartbeat, self.ringer = heartbeat, Ringer(heartbeat)

    def deliver(self, channel, frame):
        board = self._boards.get(channel)
        if board:  # nobody here listens to that channel: nothing to do
            board.post(frame)

    def deliver_all(self, frame):
        for board in list(self._boards.values()):
            board.post(frame)

    def count(self, channel):
        return self._subscribers[channel]

    def counts(self):
        return dict(list(self._subscribers.items()))

    def stream(self, channel, heartbeat, first=()):
        """One subscriber's frames. It joins on the first next() and yields `first`
        at once, so a client that got its first bytes misses nothing after them;
        it leaves when the server closes the iterator (a failed write)."""
        with self._lock:
            if (board := self._boards.get(channel)) is None:
                board = self._boards[channel] = Board()
                self.ringer.add(board)
            self._subscribers[channel] += 1
            self.changes += 1
        # The ringer wakes everyone every self.heartbeat seconds. Only a subscriber
        # that wants pings more often needs a timer on each wait, which nearly
        # doubles the cost of a wake-up (bench/wakeups.py: board vs board+t).
        timeout = heartbeat if heartbeat < self.heartbeat else None
        try:
            seen = board.seq
            yield b"".join(first)
            while True:
                n, frames = board.wait(seen, timeout)
                if lost := n - seen - len(frames):
                    yield notice_frame("missed", f"this stream fell {lost} messages behind")
                seen = n
                yield b"".join(frames) if frames else sse.PING_BYTES  # silence: the ping finds a gone client
        finally:
            with self._lock:
                self._subscribers[channel] -= 1
                self.changes += 1
                if not self._subscribers[channel]:
                    self.ringer.discard(self._boards.pop(channel))
                    del self._subscribers[channel]
