"""Demo 5's publisher: a Board (streamkit/fanout.py) with a thread that posts to it.

Each tick posts a Message: its data for the polling lanes, its SSE frame and its
JSON text for the streams, all made once for every client (Stats counts what each
lane costs). Every stream of this demo has the same heartbeat, so one Ringer
rings the board that often, and a stream's wait needs no timer of its own
(bench/wakeups.py).
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


MAX_ID = 2**53 - 1  # ids are ms-since-epoch based; JavaScript numbers stay exact up to here
JITTER = random.Random()  # our own generator: the global one belongs to the app's code


def clock_ms():
    return time.time_ns() // 1_000_000


class Message(NamedTuple):
    id: int
    data: dict  # {"id", "ts", "text"}: what the polling lanes send as JSON
    frame: bytes  # the same message as an SSE frame, encoded once for every stream
    json: str  # and as JSON text, one WebSocket frame's payload, encoded once too


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

    def since(self, seen):
        """What a client that has seen id `seen` gets next: the id to go on from. None
        means "from now on". Ids number from the clock, so one from before a restart
        is below this run's ids: the client gets everything this run has kept. One
        beyond the newest cannot be ours (a clock set back?): the history too."""
        if seen is None:
            return self.seq
        return seen if seen <= self.seq else 0

    def publish(self, text):
        """Post the next message; its id is its number on the board. Fewer than
        1,000 a second on average keeps every id of this run below the first of
        the next (COMPARE_RATE_HZ is at most 100)."""
        with self._lock:  # re-entrant: the number is taken and posted in one go
            n = self.seq + 1
            data = {"id": n, "ts": round(time.time(), 6), "text": text}
            encoded = json.dumps(data)
            message = Message(n, data, sse.format_event(encoded, id=n).encode(), encoded)
            self.post(message)
        return message


class Stats:
    """Requests and bytes per lane. Plain counters without a lock: under gevent
    nothing runs between a read and its write, and under threads a rare lost
    increment does not matter for a demo figure."""

    def __init__(self, lanes):
        self.lanes = {lane: {"requests": 0, "bytes": 0} for lane in lanes}
        self.streams = 0  # SSE responses and WebSockets open right now

    def add(self, lane, requests, size):
        self.lanes[lane]["requests"] += requests
        self.lanes[lane]["bytes"] += size
