"""The two brokers behind the broadcast demo: where a published message goes.

MemoryBroker posts it straight to this worker's Fanout (streamkit/fanout.py): one
worker only. RedisBroker sends it to Redis; one listener per worker, on one
pub/sub connection, posts every message that comes back to its own Fanout. Both
offer the same three calls: publish(channel, message) -> (id, ts),
stream(channel, heartbeat) -> an iterator of bytes, workers(channel).
"""
import json
import logging
import os
import socket
import threading
import time

from streamkit import sse
from streamkit.fanout import Fanout, message_frame, notice_frame

MAX_CHANNELS = 1000  # id counters the memory broker keeps for channels nobody watches
log = logging.getLogger(__name__)


class BrokerDown(Exception):
    """The broker cannot be reached; the message says so in words for the client."""


def this_worker(subscribers):
    return {"host": socket.gethostname(), "pid": os.getpid(), "subscribers": subscribers}


def opening(channel):
    return sse.comment(f"channel {channel}, worker {os.getpid()}").encode()


class MemoryBroker:
    """This worker's memory: the default, and right only for one worker."""
    name = "memory"

    def __init__(self):
        self.local, self._ids, self._lock = Fanout(), {}, threading.Lock()

    def publish(self, channel, message):
        with self._lock:  # one at a time, so subscribers see ids in order
            if len(self._ids) >= MAX_CHANNELS:  # forget channels nobody watches
                self._ids = {c: n for c, n in self._ids.items() if self.local.count(c)}
            id = self._ids[channel] = self._ids.get(channel, 0) + 1
            ts = round(time.time(), 3)
            self.local.deliver(channel, message_frame(id, message, ts))
        return id, ts

    def stream(self, channel, heartbeat):
        return self.local.stream(channel, heartbeat, [opening(channel)])

    def workers(self, channel):
        return [this_worker(self.local.count(channel))]


def publish_with_id(client):
    """INCR the channel's counter and PUBLISH "<id> <json>" as one Lua script. Redis
    runs a script atomically, so ids go out in the order they were taken: two
    publishers on two workers can never publish 6 before 5. A counter that does not
    exist (a new channel, or Redis restarted empty) starts from Redis's clock in µs,
    the one clock all workers share: no Redis runs it more than once a µs, so ids go
    on above every id handed out before (docs/decisions.md)."""
    return client.register_script("""
        local now = redis.call('TIME')  -- seconds, microseconds
        local us = now[1] .. string.format('%06d', tonumber(now[2]))
        redis.call('SET', KEYS[1], us, 'NX')  -- only where the counter is missing
        local id = redis.call('INCR', KEYS[1])
        redis.call('EXPIRE', KEYS[1], 86400)  -- quiet a day: forgotten, then seeded afresh
        -- %d: plain `id .. ' '` writes a 16-digit id as 1.7962819328156e+15
        redis.call('PUBLISH', ARGV[1], string.format('%d ', id) .. ARGV[2])
        return id
    """)


class RedisBroker:
    """Redis pub/sub: every worker, on every machine, sees every message.

    One pub/sub connection per worker, not one per subscriber: a listener thread
    (a greenlet under gevent) subscribes to all channels with one pattern and posts
    each message to this worker's boards, where any number of subscribers wait.
    """
    name = "redis"
    PREFIX = "broadcast:"
    REPORT_EVERY = 5.0  # seconds: each worker tells Redis how many subscribers it has…
    REPORT_TTL = 15  # …and the count of a worker that died goes away by itself
    RETRY_MAX = 0.25  # s between reconnect attempts at most: back within ~0.3 s of Redis

    def __init__(self, url):
        try:
            import redis  # the one optional extra: only needed when REDIS_URL is set
        except ImportError:
            raise RuntimeError("REDIS_URL is set but the redis package is missing: "
                               "python -m pip install redis") from None
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self._errors = redis.RedisError
        # No silent retries: a failed publish is a 503 the client sees, and a lost
        # pub/sub connection is a notice the subscribers see.
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5,
                                          retry=Retry(NoBackoff(), 0))
        self._publish = publish_with_id(self.redis)
        self.local, self.up, self._pid = Fanout(), False, None
        self._ready, self._start_lock = threading.Event(), threading.Lock()

    def publish(self, channel, message):
        ts = round(time.time(), 3)
        body = json.dumps({"message": message, "ts": ts}, ensure_ascii=False)
        try:
            id = self._publish(keys=[f"{self.PREFIX}id:{channel}"],
                               args=[f"{self.PREFIX}channel:{channel}", body])
        except self._errors as error:
            raise BrokerDown(f"Redis is unreachable ({type(error).__name__}); try again") from None
        return id, ts

    def stream(self, channel, heartbeat):
        self._start_listener()
        self._ready.wait(3)  # the first subscription confirmed (or failed): ms, once
        first = [opening(channel)]
        if not self.up:
            first.append(notice_frame("down", "Redis is unreachable: no messages until it is back"))
        return self.local.stream(channel, heartbeat, first)

    def workers(self, channel):
        """Every worker's subscribers of `channel`, as the workers last reported them."""
        prefix = f"{self.PREFIX}subscribers:"
        try:
            keys = sorted(self.redis.scan_iter(f"{prefix}*"))
            counts = [self.redis.hget(key, channel) for key in keys]
        except self._errors as error:
            raise BrokerDown(f"Redis is unreachable ({type(error).__name__}); try again") from None
        workers = []
        for key, count in zip(keys, counts):
            host, _, pid = key.decode().removeprefix(prefix).rpartition(":")
            workers.append({"host": host, "pid": int(pid), "subscribers": int(count or 0)})
        return workers

    def _start_listener(self):
        if self._pid != os.getpid():  # first use in this process (or a fork of it)
            with self._start_lock:
                if self._pid != os.getpid():
                    self._pid, self.up = os.getpid(), False
                    self._ready.clear()
                    threading.Thread(target=self._listen, daemon=True,
                                     name="broadcast-listener").start()

    def _listen(self):
        """The worker's one pub/sub connection, re-made whenever it breaks."""
        delay, reported = 0.1, {"changes": -1, "at": float("-inf")}
        while True:
            pubsub = self.redis.pubsub()
            try:
                pubsub.psubscribe(f"{self.PREFIX}channel:*")
                while True:
                    message = pubsub.get_message(timeout=0.25)
                    if message and message["type"] == "pmessage":
                        self._deliver(message["channel"], message["data"])
                    elif message and message["type"] == "psubscribe":
                        delay = self._back_up()
                        reported.update(changes=-1, at=float("-inf"))  # Redis may have lost them
                    self._report(reported)
            except Exception as error:  # whatever it was, never leave streams silently dead
                if not isinstance(error, self._errors):
                    log.exception("broadcast listener failed; reconnecting")
                if self.up or not self._ready.is_set():
                    self.up = False
                    self._ready.set()
                    self.local.deliver_all(notice_frame(
                        "down", f"lost Redis ({type(error).__name__}); reconnecting"))
            finally:
                pubsub.close()
            time.sleep(delay)
            delay = min(delay * 2, self.RETRY_MAX)

    def _back_up(self):
        if not self.up and self._ready.is_set():  # back after an outage
            self.local.deliver_all(notice_frame(
                "up", "Redis is back; messages published while it was away are lost"))
        self.up = True
        self._ready.set()
        return 0.1

    def _deliver(self, redis_channel, data):
        channel = redis_channel.decode().removeprefix(f"{self.PREFIX}channel:")
        id, _, body = data.partition(b" ")
        try:
            fields = json.loads(body)
            frame = message_frame(int(id), str(fields["message"]), float(fields["ts"]))
        except (ValueError, KeyError, TypeError):  # e.g. a hand-typed redis-cli PUBLISH
            log.warning("broadcast: skipped a malformed message on %s", channel)
            return
        self.local.deliver(channel, frame)

    def _report(self, reported):
        """Write this worker's subscriber counts to Redis when they change (at most
        every 0.25 s) and every REPORT_EVERY seconds, for the /stats of any worker."""
        now = time.monotonic()
        since = now - reported["at"]
        if since < 0.25 or (self.local.changes == reported["changes"] and since < self.REPORT_EVERY):
            return
        changes, counts = self.local.changes, self.local.counts()
        key = f"{self.PREFIX}subscribers:{socket.gethostname()}:{os.getpid()}"
        with self.redis.pipeline() as pipe:
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping=counts)
                pipe.expire(key, self.REPORT_TTL)
            pipe.execute()
        reported.update(changes=changes, at=now)


def from_url(redis_url):
    """The broker the configuration asks for: Redis when REDIS_URL is set."""
    return RedisBroker(redis_url) if redis_url else MemoryBroker()
