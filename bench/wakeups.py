#!/usr/bin/env python3
"""How long it takes to wake N parked greenlets, for each way they can wait.

Usage:
    python bench/wakeups.py [-n 1000 10000] [--ticks 8]

N greenlets each wait for "a message newer than the one I saw", then count
themselves and wait again; a publisher announces a new message and we time
until the last of them has woken. Printed per way of waiting: the median and the
worst of --ticks announcements, in ms; each measure runs in a fresh process.
The first two ways are streamkit/fanout.py's Board itself, the core both fan-out
demos use; the others are what it was chosen over.

    board       Board.wait(seen): one shared Event, the bell, swapped per post
                (demo 5: its ticker rings the bell when quiet, for the pings)
    board+t     Board.wait(seen, 15): the same with a heartbeat timeout, so a
                timer per wait (demo 6: each subscriber has its own heartbeat)
    waiters     a list of gevent Waiters, one hub callback each (gevent only)
    waiters+t   the same, each wait with a raw hub timer
    lock        a threading.Lock per waiter, released by the publisher
    condition   threading.Condition: wait_for() and notify_all()
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after the patch on purpose)
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.hub import Waiter, get_hub  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # finds demos/ from anywhere
from streamkit.fanout import Board  # noqa: E402


class Core:
    """streamkit/fanout.py's Board, waited on as demo 5's streams do: no timeout."""
    timeout = None

    def __init__(self):
        self.board = Board()

    def wait(self, seen):
        while True:
            seen, items = self.board.wait(seen, self.timeout)
            if items:
                return seen

    def publish(self):
        self.board.post(b"data: the frame, encoded once\n\n")


class CoreWithTimeout(Core):
    """As demo 6's subscribers wait: the heartbeat is the wait's timeout."""
    timeout = 15.0


class Waiters:
    def __init__(self):
        self.parked, self.last_id, self.hub = [], 0, get_hub()

    def wait(self, seen):
        while self.last_id <= seen:
            waiter = Waiter()
            self.parked.append(waiter)
            waiter.get()
        return self.last_id

    def publish(self):
        self.last_id += 1
        parked, self.parked = self.parked, []
        for waiter in parked:
            self.hub.loop.run_callback(waiter.switch, None)


class WaitersWithTimer(Waiters):
    """A raw hub timer per wait, for the heartbeat (cheaper than a gevent Timeout)."""

    def wait(self, seen):
        while self.last_id <= seen:
            waiter = Waiter()
            timer = self.hub.loop.timer(15.0)
            timer.start(waiter.switch, None)
            self.parked.append(waiter)
            try:
                waiter.get()
            finally:
                timer.close()
        return self.last_id


class LockPerWaiter:
    def __init__(self):
        self.parked, self.last_id, self.guard = [], 0, threading.Lock()

    def wait(self, seen):
        while self.last_id <= seen:
            lock = threading.Lock()
            lock.acquire()
            with self.guard:
                self.parked.append(lock)
            lock.acquire()
        return self.last_id

    def publish(self):
        self.last_id += 1
        with self.guard:
            parked, self.parked = self.parked, []
        for lock in parked:
            lock.release()


class Condition:
    def __init__(self):
        self.condition, self.last_id = threading.Condition(), 0

    def wait(self, seen):
        with self.condition:
            self.condition.wait_for(lambda: self.last_id > seen)
            return self.last_id

    def publish(self):
        with self.condition:
            self.last_id += 1
            self.condition.notify_all()


WAYS = {"board": Core, "board+t": CoreWithTimeout,
        "waiters": Waiters, "waiters+t": WaitersWithTimer,
        "lock": LockPerWaiter, "condition": Condition}


def measure(way, n, ticks):
    box, woken, last = WAYS[way](), [0], [0.0]

    def listener():
        seen = 0
        while True:
            seen = box.wait(seen)
            woken[0] += 1
            last[0] = time.perf_counter()

    listeners = [gevent.spawn(listener) for _ in range(n)]
    gevent.sleep(0.5)  # all parked
    times = []
    for _ in range(ticks):
        woken[0] = 0
        started = time.perf_counter()
        box.publish()
        while woken[0] < n:
            gevent.sleep(0.001)
        times.append((last[0] - started) * 1000)
        gevent.sleep(0.05)
    gevent.killall(listeners)
    times.sort()
    return times[len(times) // 2], times[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, nargs="+", default=[1000, 10000], help="waiters")
    parser.add_argument("--ticks", type=int, default=8, help="announcements per measure")
    parser.add_argument("--one", nargs=2, metavar=("WAY", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child process: one measure, printed as "median worst"
        print(*measure(args.one[0], int(args.one[1]), args.ticks))
        return
    print(f"{'way':>10}  {'N':>6}  {'median ms':>9}  {'max ms':>7}")
    for n in args.n:
        for way in WAYS:
            child = subprocess.run([sys.executable, __file__, "--one", way, str(n),
                                    "--ticks", str(args.ticks)],
                                   capture_output=True, text=True, check=True)
            median, worst = map(float, child.stdout.split())
            print(f"{way:>10}  {n:>6}  {median:9.1f}  {worst:7.1f}", flush=True)


if __name__ == "__main__":
    main()
