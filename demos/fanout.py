"""Fan-out inside one worker: one frame posted, every subscriber of a channel woken.

Fanout keeps a Board per channel: the frames lately posted (bytes, encoded once
per message, not once per subscriber) and the subscribers parked until the next
one. The brokers (demos/brokers.py) decide where a frame comes from.
"""
import collections
import contextlib
import itertools
import json
import os
import threading
import time

from demos import sse

try:  # gevent is a runtime requirement, but `flask run` works without it
    from gevent import get_hub, monkey
    from gevent.hub import Waiter
except ImportError:
    monkey = None

BACKLOG = 256  # frames a board keeps for a subscriber that fell behind
PING = sse.PING.encode()


def message_frame(id, message, ts):
    """The event every subscriber of this worker gets: encoded once, as bytes."""
    data = json.dumps({"message": message, "ts": ts, "pid": os.getpid()}, ensure_ascii=False)
    return sse.format_event(data, id=id).encode()


def notice_frame(state, detail):
    """`event: notice`: the broker's own news (Redis lost or back, messages missed)."""
    data = {"state": state, "detail": detail, "ts": round(time.time(), 3), "pid": os.getpid()}
    return sse.format_event(json.dumps(data), event="notice").encode()


# --- parking a subscriber until the next frame -------------------------------------
# Measured with 10,000 parked greenlets (gevent 26, 2 cores), waking them all once:
# notify_all() on a threading.Condition ~210 ms, a gevent.event.Event ~85 ms, a list
# of gevent Waiters switched to from one hub callback ~45 ms. So greenlets get
# Waiters, and threads (flask run, the test client) get a threading.Event each:
# same interface, chosen once per process.

class ThreadWaiter:
    """Threads (flask run, the test client): an Event each, set by the publisher."""
    lock = threading.Lock

    def __init__(self):
        self._event = threading.Event()

    def wait(self, timeout):
        self._event.wait(timeout)

    @staticmethod
    def wake(waiters):
        for waiter in waiters:
            waiter._event.set()


class GreenletWaiter:
    """Greenlets (gunicorn's gevent worker): a gevent Waiter, switched to from the hub."""
    # A greenlet switches only where it blocks, never inside the board's few lines
    # under the lock: no lock needed, and none taken 10,000 times a message.
    lock = contextlib.nullcontext

    def __init__(self):
        self._waiter = Waiter()

    def wait(self, timeout):
        timer = get_hub().loop.timer(timeout)
        timer.start(self._waiter.switch, None)
        try:
            self._waiter.get()
        finally:
            timer.close()

    @staticmethod
    def wake(waiters):
        # A Waiter may only be switched to from the hub: one callback wakes them all.
        get_hub().loop.run_callback(_switch_all, list(waiters))


def _switch_all(waiters):
    for waiter in waiters:
        waiter._waiter.switch(None)  # runs that subscriber until it parks again


def waiter_class():
    patched = monkey is not None and monkey.is_module_patched("threading")
    return GreenletWaiter if patched else ThreadWaiter


class Board:
    """One channel in this worker: frames numbered 1, 2, 3… and who waits for the next."""

    def __init__(self, waiter):
        self.seq = 0  # how many frames were ever posted: a generation counter
        self.recent = collections.deque(maxlen=BACKLOG)
        self.subscribers = 0
        self._waiter, self._parked = waiter, {}  # dict: O(1) removal on timeout
        self._lock = waiter.lock()

    def post(self, frame):
        with self._lock:
            self.seq += 1
            self.recent.append(frame)
            parked, self._parked = self._parked, {}
        self._waiter.wake(parked)

    def after(self, seen, timeout):
        """(frames posted after number `seen`, how many of them are lost, the new
        number), waiting up to `timeout` seconds when there is nothing new yet."""
        with self._lock:
            waiter = None if self.seq != seen else self._waiter()
            if waiter:
                self._parked[waiter] = None
        if waiter:
            waiter.wait(timeout)
        with self._lock:
            self._parked.pop(waiter, None)
            behind = self.seq - seen
            if behind == 1:
                return [self.recent[-1]], 0, self.seq  # the hot path: the frame just posted
            kept = min(behind, len(self.recent))
            frames = list(itertools.islice(self.recent, len(self.recent) - kept, None))
            return frames, behind - kept, self.seq


class Fanout:
    """This worker's subscribers, by channel."""

    def __init__(self):
        self._boards, self._lock, self._waiter = {}, threading.Lock(), waiter_class()
        self.changes = 0  # bumped when a subscriber comes or goes (RedisBroker reports counts)

    def deliver(self, channel, frame):
        board = self._boards.get(channel)
        if board:  # nobody here listens to that channel: nothing to do
            board.post(frame)

    def deliver_all(self, frame):
        for board in list(self._boards.values()):
            board.post(frame)

    def count(self, channel):
        board = self._boards.get(channel)
        return board.subscribers if board else 0

    def counts(self):
        return {channel: board.subscribers for channel, board in list(self._boards.items())}

    def stream(self, channel, heartbeat, first=()):
        """One subscriber's frames. It joins on the first next() and yields `first`
        at once, so a client that got its first bytes misses nothing after them;
        it leaves when the server closes the iterator (a failed write)."""
        with self._lock:
            board = self._boards.get(channel) or self._boards.setdefault(channel, Board(self._waiter))
            board.subscribers += 1
            self.changes += 1
        try:
            seen = board.seq
            yield b"".join(first)
            while True:
                frames, lost, seen = board.after(seen, heartbeat)
                if lost:
                    yield notice_frame("missed", f"this stream fell {lost} messages behind")
                yield b"".join(frames) if frames else PING  # silence: the ping finds a gone client
        finally:
            with self._lock:
                board.subscribers -= 1
                self.changes += 1
                if not board.subscribers:
                    del self._boards[channel]
