"""The answer store of demo 8: an LLM answer that lives apart from any connection.

An answer is the deltas the LLM has sent so far, numbered from 1, and how it ended
(its closing frames: usage and done, a relay-error, or stopped). A runner (a thread:
a greenlet under gevent) reads the LLM into the store, exactly one per answer;
any number of readers follow it from any delta on with follow(): the stored deltas
at once, then the live ones. A reader that leaves changes nothing for the answer.
Only stop() ends it early: an explicit Stop, or nobody reading it for
RESUME_ABANDON_S seconds (what resumability costs: tokens nobody may ever see).

Two stores, one interface:
  MemoryAnswers  this worker's memory: the default, right for one worker.
  RedisAnswers   Redis Streams: a reader or a Stop on any worker finds the answer.
"""
import contextlib
import json
import logging
import os
import secrets
import threading
import time

from streamkit import llm, relaying, sse

ID_BYTES = 16  # the id is the only key to an answer: 128 random bits, unguessable
MAX_ANSWERS = 10_000  # answers one worker keeps in memory; the oldest finished go first
MAX_TEXT = 1 << 20  # bytes of text one answer may hold: a longer one ends with relay-error
STOPPED, ABANDONED = "stop requested", "nobody read it for RESUME_ABANDON_S"
LOG = logging.getLogger(__name__)


class NotFound(LookupError):
    """No answer has this id: never made, or forgotten after RESUME_TTL_S."""


class StoreDown(Exception):
    """The store cannot be reached (Redis down); the message says so for the client."""


def new_id():
    return secrets.token_urlsafe(ID_BYTES)


def delta_frames(first, deltas, batch):
    """Deltas first, first+1, … as events: one each, or one for all when batching
    (its id is the last delta it holds, so a reconnect resumes after all of them)."""
    if batch:
        return b"id: %d\n%s" % (first + len(deltas) - 1, llm.content("".join(deltas)))
    return b"".join(b"id: %d\n%s" % (n, llm.content(text)) for n, text in enumerate(deltas, first))


def stopped_frame(at, reason):
    return sse.format_event(json.dumps({"at": at, "reason": reason}), event="stopped").encode()


def store_error_frame(message):
    return sse.format_event(json.dumps({"message": message, "status": 503}), event="store-error").encode()


def follow(store, id, after, batch, heartbeat):
    """One reader's stream: the deltas after `after`, stored and live, then the end.
    With `batch` (seconds) at most one event per batch, holding every delta since."""
    yield sse.comment(f"answer {id[:6]}…, worker {os.getpid()}").encode()  # the first bytes at once
    held, last, end, cursor = [], after, None, None
    sent_at = quiet_at = time.monotonic() - batch  # the first delta goes out at once
    with store.reading(id):
        while True:
            now = time.monotonic()
            if held and now >= sent_at + batch:
                yield delta_frames(last - len(held) + 1, held, batch)
                held, sent_at, quiet_at = [], now, now
            elif end is not None and not held:
                yield end
                return
            elif end is not None:  # the end is in, deltas wait for their turn
                time.sleep(sent_at + batch - now)
            elif not held and now >= quiet_at + heartbeat:
                yield sse.PING_BYTES  # a write: how a departed reader is noticed
                quiet_at = now
            else:
                try:
                    wait = (sent_at + batch if held else quiet_at + heartbeat) - now
                    deltas, end, cursor = store.read(id, last, wait, cursor)
                except StoreDown as error:
                    yield store_error_frame(str(error))
                    return
                held += deltas
                last += len(deltas)


class Runner:
    """Reads one answer from the LLM into the store: started once, by the request
    that created the answer; it ends with the answer, or when stopped."""

    def __init__(self, store, id, upstream, config):
        self.store, self.id, self.upstream = store, id, upstream
        self.dialect, self.key, self.timeout = (config[name] for name in
                                                ("UPSTREAM_DIALECT", "UPSTREAM_API_KEY", "UPSTREAM_TIMEOUT"))
        self.stopping, self.count, self.size, self.timed_out = None, 0, 0, False
        self.heard = time.monotonic()  # the LLM's last bytes
        relaying.untimed(upstream)  # the store's janitor enforces UPSTREAM_TIMEOUT from `heard`

    def start(self):
        threading.Thread(target=self.run, name=f"answer {self.id[:6]}", daemon=True).start()

    def reads(self):
        for chunk in self.upstream.iter_content(chunk_size=None):
            self.heard = time.monotonic()
            yield chunk

    def run(self):
        end, tail = None, []
        body = self.reads()  # held: a generator let go is closed, and closes the connection
        try:
            for item in llm.READERS[self.dialect](sse.iter_events(body), piece=str):  # str: a delta's text
                if self.stopping:
                    break
                if isinstance(item, str):
                    self.size += len(item.encode())
                    if self.size > MAX_TEXT:
                        raise llm.UpstreamError(f"the answer is longer than the store keeps ({MAX_TEXT >> 20} MiB)")
                    self.count += 1
                    self.store.add(self.id, self.count, item)
                else:
                    tail.append(item)  # usage, done: the closing frames
            else:
                end = b"".join(tail)
                relaying.read_to_end(self.upstream)  # the connection goes back to the pool
        except StoreDown:
            self.stopping = "the answer store is unreachable"
        except Exception as error:  # the LLM broke, went silent, sent nonsense, or we cut it
            if not self.stopping or self.timed_out:
                end = relaying.error_frame(error, self.key, self.timed_out)
        finally:
            self.upstream.close()
            self.store.finish(self.id, end or stopped_frame(self.count, self.stopping), self.count)

    def stop(self, reason):
        """Close the LLM's connection under the runner's read: it returns at once."""
        if self.stopping is None:
            self.stopping = reason
            relaying.cut(self.upstream)

    def check(self, now):
        """The janitor's visit: an LLM silent for UPSTREAM_TIMEOUT is cut (a 504 relay-error)."""
        if now - self.heard > self.timeout and self.stopping is None:
            self.timed_out = True
            self.stop("the upstream went silent")


class Janitor:
    """What both stores share: the runners of this worker, and one thread that visits
    them every `tick` seconds (no timer per answer or per read)."""

    def __init__(self, abandon, ttl):
        self.abandon, self.ttl = abandon, ttl
        self.tick = max(0.05, min(0.5, abandon / 4, ttl / 4))
        self.runners, self.lock, self.janitor = {}, threading.Lock(), None

    def start(self, runner):
        self.runners[runner.id] = runner
        with self.lock:
            if self.janitor is None:  # in the worker, after the fork: one per process
                self.janitor = threading.Thread(target=self.sweep, name="answer janitor", daemon=True)
                self.janitor.start()
        runner.start()

    def running(self):
        return len(self.runners)

    def sweep(self):
        while True:
            time.sleep(self.tick)
            try:
                now = time.monotonic()
                for runner in list(self.runners.values()):
                    runner.check(now)
                self.tidy(now)
            except Exception:  # never let one odd answer end the janitor for all
                LOG.exception("resume: the janitor failed a round")


class Answer:
    """One answer in memory: its text as UTF-8, the size of each delta as a varint
    (1 byte for a delta under 128 bytes), so a stored answer costs about its text."""
    __slots__ = ("text", "sizes", "count", "end", "bell", "rung", "readers", "seen", "ended_at")

    def __init__(self):
        self.text, self.sizes, self.count, self.end = bytearray(), bytearray(), 0, None
        self.bell = threading.Event()  # readers park on it; rung (and replaced) for news
        self.readers, self.seen, self.ended_at = 0, time.monotonic(), None
        self.rung = self.seen  # when the bell last rang

    def deltas(self, after, cursor=None):
        """The deltas after number `after` as text, and a cursor that makes the next
        call start where this one ended instead of at delta 1."""
        n, i, at = cursor if cursor and cursor[0] == after else (0, 0, 0)
        out, sizes, text = [], self.sizes, self.text
        while i < len(sizes):
            size, shift = 0, 0
            while True:
                byte = sizes[i]
                i += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            n += 1
            if n > after:
                out.append(text[at:at + size].decode())
            at += size
        return out, (n, i, at)


class MemoryAnswers(Janitor):
    """Answers in this worker's memory: a reader on another worker finds nothing."""
    name = "memory"

    def __init__(self, abandon, ttl):
        super().__init__(abandon, ttl)
        self.answers = {}

    def create(self, id):
        if len(self.answers) >= MAX_ANSWERS:
            finished = [key for key, answer in self.answers.items() if answer.end is not None]
            if not finished:
                raise StoreDown(f"{MAX_ANSWERS} answers are running on this worker; try again later")
            del self.answers[min(finished, key=lambda key: self.answers[key].ended_at)]
        self.answers[id] = Answer()

    def forget(self, id):
        self.answers.pop(id, None)

    def add(self, id, n, text):
        answer = self.answers[id]
        data = text.encode()
        answer.text += data  # the text first: a reader decodes only the sizes it sees
        size = len(data)
        while size >= 0x80:
            answer.sizes.append(size & 0x7F | 0x80)
            size >>= 7
        answer.sizes.append(size)
        answer.count = n
        self.ring(answer)

    def ring(self, answer, again=True):
        """Wake the answer's readers: the bell they hold rings, new ones take a new bell."""
        with self.lock:
            bell, answer.bell = answer.bell, threading.Event() if again else None
        answer.rung = time.monotonic() if again else None
        if bell is not None:
            bell.set()

    def finish(self, id, end, count):
        self.runners.pop(id, None)
        if (answer := self.answers.get(id)) is None:
            return
        answer.text, answer.sizes = bytes(answer.text), bytes(answer.sizes)  # no spare room
        answer.end, answer.ended_at, answer.seen = end, time.monotonic(), None
        self.ring(answer, again=False)  # no bell after the end: nothing more to wait for

    def status(self, id):
        """(deltas so far, ended?) of a known answer; NotFound otherwise."""
        if (answer := self.answers.get(id)) is None:
            raise NotFound(id)
        return answer.count, answer.end is not None

    def read(self, id, after, timeout, cursor=None):
        """The deltas after `after`, the end if it has come, and a cursor for the next
        read. With nothing new, waits for news first: up to `timeout`, or, when that is
        longer than a tick, until the janitor's next ring (no timer per wait)."""
        if (answer := self.answers.get(id)) is None:
            raise StoreDown("the answer was forgotten while it was being read")
        bell = answer.bell  # taken before looking: news after this rings it
        if bell is not None and answer.count <= after and answer.end is None:
            bell.wait(None if timeout >= self.tick else max(timeout, 0))
        end = answer.end
        deltas, cursor = answer.deltas(after, cursor)
        return deltas, end, cursor

    @contextlib.contextmanager
    def reading(self, id):
        """While a reader follows an answer, the answer is not abandoned."""
        answer = self.answers.get(id)
        if answer is None:
            yield
            return
        answer.readers += 1
        try:
            yield
        finally:
            answer.readers -= 1
            if answer.end is None:
                answer.seen = time.monotonic()

    def stop(self, id, reason):
        """True if the answer exists (running or not); a running one is stopped."""
        if id not in self.answers:
            return False
        if runner := self.runners.get(id):
            runner.stop(reason)
        return True

    def tidy(self, now):
        """Each tick: ring every running answer that has been quiet for a tick (its
        readers check their heartbeat), stop those nobody has read for
        RESUME_ABANDON_S, forget finished ones after RESUME_TTL_S."""
        for id, answer in list(self.answers.items()):
            if answer.end is None:
                if now - answer.rung >= self.tick:
                    self.ring(answer)
                if not answer.readers and now - answer.seen > self.abandon:
                    self.stop(id, ABANDONED)
            elif now - answer.ended_at > self.ttl:
                self.answers.pop(id, None)


class RedisAnswers(Janitor):
    """Redis Streams: one stream per answer, `resume:<id>`. Entry 0-1 marks the
    answer's start; delta n is entry n-0 (so XREAD after n-0 is "resume after n");
    the end is entry (count+1)-0. A reader anywhere keeps `resume:<id>:seen` alive;
    the worker that runs the answer stops it when that key expires. Stop reaches
    that worker over pub/sub."""
    name = "redis"
    STOP_CHANNEL = "resume:stop"
    RUNNING_KEEP = 3600  # s a running answer's stream lives past its last delta

    def __init__(self, url, abandon, ttl):
        import redis  # the one optional extra
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self._errors = redis.RedisError
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=70,
                                          retry=Retry(NoBackoff(), 0))
        super().__init__(abandon, ttl)
        self.listener, self.down_since = None, None

    def _call(self, do):
        try:
            return do()
        except self._errors as error:
            raise StoreDown(f"the answer store (Redis) is unreachable ({type(error).__name__})") from None

    def create(self, id):
        key = f"resume:{id}"
        self._call(lambda: self.redis.pipeline(transaction=False)
                   .xadd(key, {"s": ""}, id="0-1").pexpire(key, int(self.RUNNING_KEEP * 1000))
                   .set(f"{key}:seen", 1, px=max(1, int(self.abandon * 1000))).execute())
        with self.lock:
            if self.listener is None:  # in the worker, after the fork: one per process
                self.listener = threading.Thread(target=self.listen, name="answer stops", daemon=True)
                self.listener.start()

    def forget(self, id):
        self._call(lambda: self.redis.delete(f"resume:{id}", f"resume:{id}:seen"))

    def add(self, id, n, text):
        key = f"resume:{id}"
        self._call(lambda: self.redis.pipeline(transaction=False)
                   .xadd(key, {"d": text.encode()}, id=f"{n}-0")
                   .pexpire(key, int(self.RUNNING_KEEP * 1000)).execute())

    def finish(self, id, end, count):
        self.runners.pop(id, None)
        key = f"resume:{id}"
        try:
            self._call(lambda: self.redis.pipeline(transaction=False)
                       .xadd(key, {"e": end}, id=f"{count + 1}-0")
                       .pexpire(key, max(1, int(self.ttl * 1000))).delete(f"{key}:seen").execute())
        except StoreDown:
            LOG.warning("resume: could not store the end of answer %s…: Redis is down", id[:6])

    def status(self, id):
        entries = self._call(lambda: self.redis.xrevrange(f"resume:{id}", count=1))
        if not entries:
            raise NotFound(id)
        entry_id, fields = entries[0]
        number = int(entry_id.split(b"-")[0])
        return (number - 1, True) if b"e" in fields else (number, False)

    def read(self, id, after, timeout, cursor=None):
        key = f"resume:{id}"
        block = max(1, int(min(timeout, self.abandon / 3) * 1000))  # the lease outlives the wait

        def do():
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(f"{key}:seen", 1, px=max(1, int(self.abandon * 1000)), xx=True)
            pipe.xread({key: f"{after}-0" if after else "0-1"}, count=1000, block=block)
            pipe.exists(key)
            return pipe.execute()
        _, found, exists = self._call(do)
        if not exists:
            raise StoreDown("the answer expired while it was being read")
        deltas, end = [], None
        for _, entries in found or ():
            for entry_id, fields in entries:
                if b"d" in fields:
                    deltas.append(fields[b"d"].decode())
                elif b"e" in fields:
                    end = fields[b"e"]
        return deltas, end, None

    def reading(self, id):
        return contextlib.nullcontext()  # readers keep the :seen key alive in read()

    def stop(self, id, reason):
        if runner := self.runners.get(id):
            runner.stop(reason)
            return True
        if not self._call(lambda: self.redis.exists(f"resume:{id}")):
            return False
        self._call(lambda: self.redis.publish(self.STOP_CHANNEL, id))  # the runner's worker hears it
        return True

    def listen(self):
        """Stops sent to another worker, for the answers this worker runs."""
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.STOP_CHANNEL)
                for message in pubsub.listen():
                    if runner := self.runners.get(message["data"].decode()):
                        runner.stop(STOPPED)
            except Exception:  # Redis went away: listen again when it is back
                time.sleep(0.25)

    def tidy(self, now):
        """Each tick: stop this worker's answers whose :seen key has expired (nobody
        read them for RESUME_ABANDON_S, on any worker). With Redis down that long,
        nobody can read them."""
        runners = list(self.runners.values())
        if not runners:
            return
        pipe = self.redis.pipeline(transaction=False)
        for runner in runners:
            pipe.exists(f"resume:{runner.id}:seen")
        try:
            alive, self.down_since = self._call(pipe.execute), None
        except StoreDown:
            self.down_since = self.down_since or now
            alive = [now - self.down_since < self.abandon] * len(runners)
        for runner, seen in zip(runners, alive):
            if not seen:
                runner.stop(ABANDONED)


def from_url(url, abandon, ttl):
    """The store: Redis when REDIS_URL is set, else this worker's memory."""
    return RedisAnswers(url, abandon, ttl) if url else MemoryAnswers(abandon, ttl)
