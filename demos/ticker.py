"""One publisher per worker process and thousands of cheap listeners (demo 5's ticker).

A tick encodes its message once, as the bytes of its SSE frame, and wakes every
listener in one pass. Listeners park on one shared `threading.Event`, "the bell":
each publish swaps in a new bell and rings the old one, so the message id works as
a generation counter and nobody needs a queue of their own. (The "announcer"
pattern, a queue per listener filled by a loop, measured 760 ms p99 at 10,000
streams.) The ticker also rings when it has been quiet for `heartbeat` seconds, so
streams can send their `: ping` without a timer each: a timer per wait made a
wake-up up to 80 % dearer in our measurements (bench/wakeups.py).

Under gunicorn's gevent worker (and `python -m demos serve`) threading is
monkey-patched: the ticker thread is a greenlet and the bell is gevent's Event.
Under `flask run` and the Flask test client both are the real thing. The code is
the same; create the Ticker after patching (demos are imported after it).
"""
import collections
import itertools
import json
import random
import threading
import time
from typing import NamedTuple

from demos import sse


class Message(NamedTuple):
    id: int
    data: dict  # {"id", "ts", "text"}: what the polling lanes send as JSON
    frame: bytes  # the same message as an SSE frame, encoded once for every stream


class Ticker:
    """Publishes a message about `rate_hz` times a second (with jitter) and keeps
    the last `history` of them for clients that ask for what they missed."""

    def __init__(self, rate_hz, heartbeat=15.0, history=1000):
        self.rate_hz, self.heartbeat = rate_hz, heartbeat
        self.last_id = 0
        self._history = collections.deque(maxlen=history)
        self._latest = None
        self._lock = threading.Lock()  # one writer at a time; readers mostly skip it
        self._bell = threading.Event()
        self._stopping = threading.Event()
        self._thread = None

    def start(self):
        """Start publishing, once: the first request does it, not the import."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)
                    self._thread.start()

    def stop(self):
        self._stopping.set()

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def _run(self):
        due = time.monotonic() + self._pause()
        while not self._stopping.wait(max(0.0, min(due - time.monotonic(), self.heartbeat))):
            if time.monotonic() >= due:
                self.publish(f"tick {self.last_id + 1}")
                due = time.monotonic() + self._pause()
            else:  # quiet for a heartbeat: wake the streams so they send a ping
                with self._lock:
                    self._ring()

    def _pause(self):
        # Jitter, so a client polling at the same rate does not lock in step with us.
        return random.uniform(0.5, 1.5) / self.rate_hz

    def publish(self, text):
        """Add a message and wake every listener. The frame is encoded here, once."""
        with self._lock:
            n = self.last_id + 1
            data = {"id": n, "ts": round(time.time(), 6), "text": text}
            message = Message(n, data, sse.format_event(json.dumps(data), id=n).encode())
            self._history.append(message)
            self._latest, self.last_id = message, n
            self._ring()
        return message

    def _ring(self):
        # New waiters take the new bell; everyone parked on the old one wakes up.
        bell, self._bell = self._bell, threading.Event()
        bell.set()

    def after(self, since):
        """The messages newer than id `since` still in the history, oldest first."""
        latest = self._latest
        if latest is None or latest.id <= since:
            return []
        if latest.id == since + 1:
            return [latest]  # a listener keeping up: no lock, no copy
        with self._lock:
            skip = max(0, since + 1 - self._history[0].id)
            return list(itertools.islice(self._history, skip, None))

    def wait(self, since, timeout=None):
        """Park until there is a message newer than `since`, the heartbeat rings or
        `timeout` passes; return the new messages (none after a heartbeat)."""
        bell = self._bell  # taken before looking: a publish after this rings it
        if self.last_id <= since:
            bell.wait(timeout)
        return self.after(since)
