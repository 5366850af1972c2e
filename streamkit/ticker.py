"""Demo 5's publisher: a Board (streamkit/fanout.py) with a thread that posts to it.

Each tick posts a Message: its JSON data for the polling lanes and its SSE frame
for the streams, both made once for every client. Every stream of this demo has
the same heartbeat, so one Ringer rings the board that often, and a stream's wait
needs no timer of its own (bench/wakeups.py).
Ids number from the clock: the first is the time the ticker started, in ms since
the epoch, then +1 per message. They stay consecutive within one run (a client can
count gaps), and a worker that restarts starts above every id it handed out
before, so a client resuming with an old id goes on at once (docs/decisions.md).
Under gevent's patching the thread is a greenlet; create the Ticker after it.
"""
import json
import random
import threading
import time
from typing import NamedTuple

from streamkit import sse
from streamkit.fanout import Board, Ringer


JITTER = random.Random()  # our own generator: the global one belongs to the app's code


def clock_ms():
    return time.time_ns() // 1_000_000


class Message(NamedTuple):
    id: int
    data: dict  # {"id", "ts", "text"}: what the polling lanes send as JSON
    frame: bytes  # the same message as an SSE frame, encoded once for every stream


class Ticker(Board):
    """Posts a message about `rate_hz` times a second (with jitter), keeps the last
    `history` messages, and has a Ringer ring it every `heartbeat` seconds."""

    def __init__(self, rate_hz, heartbeat=15.0, history=1000):
        super().__init__(history, base=clock_ms() - 1)
        self.rate_hz, self.ringer = rate_hz, Ringer(heartbeat)
        self._stopping, self._thread = threading.Event(), None

    def start(self):
        """Start publishing, once: the first request does it, not the import."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    if self.latest[1] is None:  # nothing posted: number from now, in this process
                        self.base = clock_ms() - 1
                        self.latest = (self.base, None)
                    self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)
                    self._thread.start()
                    self.ringer.add(self)

    def stop(self):
        self._stopping.set()
        self.ringer.discard(self)

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def _run(self):
        while not self._stopping.wait(self._pause()):
            self.publish(f"tick {self.seq - self.base + 1}")  # its number in this run

    def _pause(self):
        # Jitter, so a client polling at the same rate does not lock in step with us.
        return JITTER.uniform(0.5, 1.5) / self.rate_hz

    def publish(self, text):
        """Post the next message; its id is its number on the board. Fewer than
        1,000 a second on average keeps every id of this run below the first of
        the next (COMPARE_RATE_HZ is at most 100)."""
        with self._lock:  # re-entrant: the number is taken and posted in one go
            n = self.seq + 1
            data = {"id": n, "ts": round(time.time(), 6), "text": text}
            message = Message(n, data, sse.format_event(json.dumps(data), id=n).encode())
            self.post(message)
        return message
