"""Demo 6: publish/subscribe, with the in-memory broker and with Redis across workers."""
import json
import os
import threading
import time

import pytest
import redis
import requests

from demos import broadcast
from streamkit import brokers, fanout, sse
from tests.conftest import (LiveServer, RedisServer, free_port, live_events, read_events,
                            redis_executable, wait_until)


@pytest.fixture
def app():
    return broadcast.create_app({"TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


class Subscriber:
    """A stream opened with the Flask test client, read event by event."""

    def __init__(self, client, url):
        self.response = client.get(url)
        self.chunks = iter(self.response.response)
        self.parser = sse.EventParser()
        self.first = next(self.chunks)  # the first bytes: from here on it misses nothing

    def events(self, count):
        events = []
        while len(events) < count:
            events += self.parser.feed(next(self.chunks))
        return events

    def close(self):
        self.response.close()  # what the WSGI server does when a write fails


def payloads(events):
    return [json.loads(event.data) for event in events]


def publish(client, message, channel="main", **kwargs):
    return client.post("/publish", json={"channel": channel, "message": message}, **kwargs)


def subscribers(client, channel="main"):
    return client.get(f"/stats?channel={channel}").get_json()["subscribers"]


# --- the in-memory broker ----------------------------------------------------------------

def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'data-publish-url="/publish"' in page and 'data-stats-url="/stats"' in page
    assert "Broker: <strong>memory</strong>" in page and 'name="token"' not in page


def test_every_subscriber_gets_each_message_once_with_ids(client):
    first, second = Subscriber(client, "/stream"), Subscriber(client, "/stream")
    assert first.first.startswith(b": channel main, worker ")
    assert subscribers(client) == 2
    answers = [publish(client, text) for text in ("one", "two", "three")]
    assert [answer.status_code for answer in answers] == [202] * 3
    assert [answer.get_json()["id"] for answer in answers] == [1, 2, 3]
    for subscriber in (first, second):
        events = subscriber.events(3)
        assert [event.id for event in events] == ["1", "2", "3"]
        assert [p["message"] for p in payloads(events)] == ["one", "two", "three"]
        assert {p["pid"] for p in payloads(events)} == {os.getpid()}
        assert [p["ts"] for p in payloads(events)] == [a.get_json()["ts"] for a in answers]
        subscriber.close()
    assert subscribers(client) == 0


def test_channels_are_separate_and_count_their_own_ids(client):
    news, sport = Subscriber(client, "/stream?channel=news"), Subscriber(client, "/stream?channel=sport")
    for message, channel in [("n1", "news"), ("s1", "sport"), ("n2", "news")]:
        publish(client, message, channel)
    news_events, sport_events = news.events(2), sport.events(1)
    assert [e.id for e in news_events] == ["1", "2"] and [e.id for e in sport_events] == ["1"]
    assert [p["message"] for p in payloads(news_events + sport_events)] == ["n1", "n2", "s1"]


def test_a_blocked_subscriber_wakes_when_another_thread_publishes(client):
    # Threads, as under `flask run`: the reader waits inside the stream until a
    # publisher on another thread posts.
    def publisher():
        wait_until(lambda: subscribers(client, "t") == 1, timeout=5)
        for n in range(3):
            publish(client, f"m{n}", "t")

    thread = threading.Thread(target=publisher)
    thread.start()
    stream = read_events(client, "/stream?channel=t", limit=3)
    thread.join()
    assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["X-Accel-Buffering"] == "no" and stream.headers["Cache-Control"] == "no-cache"
    assert [p["message"] for p in payloads(stream.events)] == ["m0", "m1", "m2"]


def test_a_quiet_stream_pings_and_a_closed_one_is_released(client):
    subscriber = Subscriber(client, "/stream?heartbeat=0.05")
    assert [next(subscriber.chunks) for _ in range(3)] == [b": ping\n\n"] * 3
    subscriber.close()
    assert subscribers(client) == 0


def test_the_ringer_pings_subscribers_that_keep_the_default_heartbeat():
    # They wait on the bell with no timer of their own: the one ringer wakes them.
    hub = fanout.Fanout(heartbeat=0.05)
    streams = [hub.stream(channel, heartbeat=0.05) for channel in ("a", "a", "b")]
    assert [next(s) for s in streams] == [b""] * 3
    assert [next(s) for s in streams for _ in range(2)] == [sse.PING_BYTES] * 6
    for s in streams:
        s.close()
    assert hub.counts() == {}


def test_a_message_cannot_inject_fields_or_events(client):
    # Newlines in a message stay inside the JSON string: one data line, one event.
    subscriber = Subscriber(client, "/stream")
    sneaky = "hi\n\nevent: end\ndata: <script>alert(1)</script>\r\nid: 99"
    publish(client, sneaky)
    publish(client, "next")
    events = subscriber.events(2)
    assert [e.event for e in events] == ["message", "message"] and events[0].id == "1"
    assert payloads(events)[0]["message"] == sneaky


def test_every_subscriber_is_handed_the_same_bytes():
    # The frame is encoded once per message, not once per subscriber.
    hub = fanout.Fanout()
    streams = [hub.stream("c", heartbeat=1, first=[b": hi\n\n"]) for _ in range(3)]
    assert [next(s) for s in streams] == [b": hi\n\n"] * 3
    hub.deliver("c", fanout.message_frame(1, "x", 1.5))
    frames = [next(s) for s in streams]
    assert all(frame is frames[0] for frame in frames)
    for s in streams:
        s.close()
    assert hub.counts() == {}


def test_a_subscriber_that_fell_behind_is_told_what_it_missed():
    hub = fanout.Fanout()
    stream = hub.stream("c", heartbeat=1)
    next(stream)
    for n in range(1, fanout.BACKLOG + 4):
        hub.deliver("c", fanout.message_frame(n, f"m{n}", 0))
    parser = sse.EventParser()
    notice, *kept = parser.feed(next(stream) + next(stream))
    assert notice.event == "notice" and json.loads(notice.data)["state"] == "missed"
    assert "3 messages behind" in json.loads(notice.data)["detail"]
    assert [int(event.id) for event in kept] == list(range(4, fanout.BACKLOG + 4))


@pytest.mark.parametrize("body, status, message", [
    (b"not json", 400, "the body must be a JSON object such as"),
    (b'["main", "hi"]', 400, "the body must be a JSON object such as"),
    (b'{"channel": "main"}', 400, "message must be a non-empty string"),
    (b'{"message": 42}', 400, "message must be a non-empty string"),
    (b'{"message": "  "}', 400, "message must be a non-empty string"),
    (b'{"message": "\\ud800"}', 400, "message must be valid Unicode text"),
    (b'{"channel": "a b", "message": "hi"}', 400, "channel must be 1 to 64 letters"),
    (b'{"channel": ["main"], "message": "hi"}', 400, "channel must be 1 to 64 letters"),
    (json.dumps({"message": "é" * 2049}).encode(), 413, "message is 4098 bytes of UTF-8; at most 4096"),
    (b'{"message": "' + b"x" * 70_000 + b'"}', 413, "request body too large: at most 64 KiB"),
], ids=["not-json", "array", "missing", "number", "blank", "surrogate", "channel-space",
        "channel-list", "oversized", "body-over-64k"])
def test_bad_publish_gets_json_4xx(client, body, status, message):
    response = client.post("/publish", data=body, content_type="application/json")
    assert response.status_code == status
    assert response.get_json()["error"].startswith(message)


@pytest.mark.parametrize("url, message", [
    ("/stream?channel=", "channel must be 1 to 64 letters"),
    ("/stream?channel=" + "x" * 65, "channel must be 1 to 64 letters"),
    ("/stream?heartbeat=0", "heartbeat must be a number from 0.05 to 60"),
    ("/stats?channel=%0A", "channel must be 1 to 64 letters"),
])
def test_bad_stream_or_stats_query(client, url, message):
    response = client.get(url)
    assert response.status_code == 400 and response.get_json()["error"].startswith(message)


def test_publish_is_post_only(client):
    response = client.get("/publish")
    assert response.status_code == 405 and "error" in response.get_json()


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer nope"}, 403), ({"Authorization": "Basic s3cret"}, 401),
    ({"Authorization": "Bearer s3cret"}, 202),
], ids=["missing", "wrong", "other-scheme", "right"])
def test_token_guards_publishing_only(headers, status):
    client = broadcast.create_app({"TESTING": True, "BROADCAST_TOKEN": "s3cret"}).test_client()
    assert 'name="token"' in client.get("/").get_data(as_text=True)
    response = publish(client, "hi", headers=headers)
    assert response.status_code == status
    assert status == 202 or "BROADCAST_TOKEN" in response.get_json()["error"]
    assert read_events(client, "/stream?heartbeat=0.05", limit=0).status == 200  # reading is open


# --- Redis, in this process --------------------------------------------------------------

def pubsub_connections(url):
    return sum(int(c["psub"]) > 0 for c in redis.Redis.from_url(url).client_list())


def test_redis_broker_one_connection_for_many_subscribers(redis_server):
    client = broadcast.create_app({"TESTING": True, "REDIS_URL": redis_server.url}).test_client()
    streams = [Subscriber(client, "/stream?channel=r") for _ in range(20)]
    id = publish(client, "via redis", "r").get_json()["id"]
    assert abs(id - time.time() * 1e6) < 5e6  # a new channel's ids start from Redis's clock (µs)
    assert all(payloads(s.events(1))[0]["message"] == "via redis" for s in streams)
    assert pubsub_connections(redis_server.url) == 1  # not 20
    assert redis.Redis.from_url(redis_server.url).get("broadcast:id:r") == str(id).encode()
    assert wait_until(lambda: subscribers(client, "r") == 20, timeout=2)
    for s in streams:
        s.close()
    assert wait_until(lambda: subscribers(client, "r") == 0, timeout=2)


def test_without_redis_a_stream_says_so_and_publishing_is_503():
    # Nothing listens on that port: the stream still opens at once, with the reason.
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = broadcast.create_app({"TESTING": True, "REDIS_URL": url}).test_client()
    subscriber = Subscriber(client, "/stream?channel=r&heartbeat=0.05")
    notice, = sse.EventParser().feed(subscriber.first)
    assert notice.event == "notice" and json.loads(notice.data)["state"] == "down"
    assert next(subscriber.chunks) == b": ping\n\n"  # open, and alive
    for response in (publish(client, "lost", "r"), client.get("/stats?channel=r")):
        assert response.status_code == 503
        assert response.get_json()["error"] == "Redis is unreachable (ConnectionError); try again"
    subscriber.close()


# --- live: gunicorn gevent workers ---------------------------------------------------------

@pytest.fixture(scope="module")
def redis_pair(tmp_path_factory):
    """redis-server and 2 gevent workers using it, shared by the tests that don't stop them."""
    tmp = tmp_path_factory.mktemp("broadcast")
    store = RedisServer(tmp, redis_executable()).start()
    server = LiveServer(tmp, workers=2, env={"REDIS_URL": store.url}).start()
    yield server, store
    server.stop()
    store.stop()


def live_stats(server, channel):
    return requests.get(f"{server.url}/broadcast/stats?channel={channel}", timeout=5).json()


@pytest.mark.live
def test_live_50_subscribers_on_two_workers_get_100_messages_once_in_order(redis_pair):
    server, store = redis_pair
    url = f"{server.url}/broadcast/stream?channel=fanout"
    streams = [None] * 50

    def subscribe(n):
        streams[n] = live_events(url, limit=100, timeout=20)

    readers = [threading.Thread(target=subscribe, args=(n,)) for n in range(50)]
    for reader in readers:
        reader.start()
    assert wait_until(lambda: live_stats(server, "fanout")["subscribers"] == 50, timeout=10)
    with requests.Session() as session:
        ids = [session.post(f"{server.url}/broadcast/publish", timeout=5,
                            json={"channel": "fanout", "message": f"m{n}"}).json()["id"]
               for n in range(100)]
    for reader in readers:
        reader.join(timeout=20)
    assert ids == list(range(ids[0], ids[0] + 100))  # consecutive, whichever worker took them
    for stream in streams:
        assert [event.id for event in stream.events] == [str(id) for id in ids]
        assert [p["message"] for p in payloads(stream.events)] == [f"m{n}" for n in range(100)]
    delivered_by = {payloads(stream.events)[0]["pid"] for stream in streams}
    assert delivered_by == set(server.worker_pids())  # both workers held streams
    assert pubsub_connections(store.url) == 2  # one per worker, not one per subscriber


@pytest.mark.live
def test_live_a_departed_subscriber_is_released(redis_pair):
    server, _ = redis_pair
    response = requests.get(f"{server.url}/broadcast/stream?channel=gone&heartbeat=0.05",
                            stream=True, timeout=5)
    chunks = response.iter_content(chunk_size=None)  # keep it: dropping it closes the stream
    assert next(chunks).startswith(b": channel gone")
    assert wait_until(lambda: live_stats(server, "gone")["subscribers"] == 1, timeout=2)
    response.close()  # the tab is closed: the next pings fail, the worker lets go
    assert wait_until(lambda: live_stats(server, "gone")["subscribers"] == 0, timeout=2)


@pytest.mark.live
def test_live_bad_input_is_json_4xx(redis_pair):
    server, _ = redis_pair
    response = requests.post(f"{server.url}/broadcast/publish", data="{oops", timeout=5)
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
    response = requests.get(f"{server.url}/broadcast/stream?channel=no/slash", timeout=5)
    assert response.status_code == 400 and "channel must be" in response.json()["error"]


@pytest.mark.live
def test_live_redis_restart_is_reported_and_survived_and_ids_go_on(redis_server, start_server):
    server = start_server(env={"REDIS_URL": redis_server.url})
    url = f"{server.url}/broadcast/stream?channel=r&heartbeat=0.2"
    stream = {}
    reader = threading.Thread(target=lambda: stream.update(s=live_events(url, limit=6, timeout=15)))
    reader.start()
    publish_url = f"{server.url}/broadcast/publish"

    def publish_live(message):
        answer = requests.post(publish_url, json={"channel": "r", "message": message}, timeout=5)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    assert wait_until(lambda: live_stats(server, "r")["subscribers"] == 1, timeout=5)
    before = [publish_live(f"before {n}") for n in range(2)]
    redis_server.stop()
    refused = requests.post(publish_url, json={"channel": "r", "message": "lost"}, timeout=5)
    assert refused.status_code == 503 and "Redis is unreachable" in refused.json()["error"]
    redis_server.start()  # same port, data gone: the channel's counter too
    # Back when the worker has re-subscribed and reported its subscriber again.
    assert wait_until(lambda: live_stats(server, "r").get("subscribers") == 1, timeout=10)
    after = [publish_live(f"after {n}") for n in range(2)]
    reader.join(timeout=15)
    events = stream["s"].events
    assert [(e.event, p.get("state", p.get("message"))) for e, p in zip(events, payloads(events))] == [
        ("message", "before 0"), ("message", "before 1"), ("notice", "down"), ("notice", "up"),
        ("message", "after 0"), ("message", "after 1")]
    assert ": ping" in stream["s"].raw  # never silent, even while Redis was away
    # Ids never go backwards: the counter Redis lost starts again above every old id.
    assert before[0] < before[1] < after[0] < after[1], (before, after)
    assert [int(e.id) for e in events if e.event == "message"] == before + after


@pytest.mark.live
def test_live_listener_is_back_within_half_a_second_of_redis(redis_server, start_server):
    # Redis stays down long enough for a growing reconnect backoff to grow (the old
    # one, doubling up to 2 s, came back ~1 s late here); then we measure from
    # redis-server answering again to the first message a subscriber receives,
    # publishing every 20 ms until one gets through.
    server = start_server(env={"REDIS_URL": redis_server.url})
    url = f"{server.url}/broadcast/stream?channel=back&heartbeat=0.2"
    stream = {}
    reader = threading.Thread(target=lambda: stream.update(s=live_events(url, limit=3, timeout=15)))
    reader.start()
    assert wait_until(lambda: live_stats(server, "back")["subscribers"] == 1, timeout=5)
    redis_server.stop()
    time.sleep(2.0)  # long enough for a backoff (0.1, 0.2, 0.4, 0.8 s…) to grow past 0.5 s
    redis_server.start()
    answering = time.monotonic()
    with requests.Session() as session:
        while reader.is_alive() and time.monotonic() - answering < 5:
            session.post(f"{server.url}/broadcast/publish", timeout=5,
                         json={"channel": "back", "message": "probe"})
            time.sleep(0.02)
    reader.join(timeout=5)
    s = stream["s"]
    assert [e.event for e in s.events] == ["notice", "notice", "message"]  # down, up, a probe
    recovery = s.arrivals[2] - answering
    print(f"listener back {recovery * 1000:.0f} ms after redis-server answered")
    assert recovery < 0.5, f"{recovery:.2f} s"


def test_two_workers_keep_ids_rising_when_redis_loses_its_counter(redis_server):
    # Two brokers stand for two workers: whichever publishes first after Redis was
    # emptied sets the channel's counter, and ids keep rising for both, even after
    # a burst faster than one message a millisecond.
    one, two = (brokers.RedisBroker(redis_server.url) for _ in range(2))
    before = [broker.publish("c", f"m{n}")[0] for n, broker in enumerate([one, two, one])]
    redis.Redis.from_url(redis_server.url).flushall()  # what a restart without persistence does
    after = [broker.publish("c", f"m{n}")[0] for n, broker in enumerate([two, one, two])]
    ids = before + after
    assert ids == sorted(set(ids)) and after == list(range(after[0], after[0] + 3)), ids


# --- the page -------------------------------------------------------------------------------

@pytest.mark.browser
def test_two_pages_see_each_others_messages(live_server, page):
    other = page.context.new_page()
    for tab in (page, other):
        tab.goto(live_server.url + "/broadcast/")
        tab.fill("input[name=channel]", "browser")
        tab.click("#controls button[type=submit]")
    assert wait_until(lambda: live_stats(live_server, "browser")["subscribers"] == 4, timeout=5)
    page.fill("input[name=message]", "<b>hello</b> from tab 1")
    page.click("#publish button[type=submit]")
    for tab in (page, other):
        item = tab.locator("#messages li").first
        item.wait_for()
        assert item.text_content().startswith("#1 <b>hello</b> from tab 1  (worker ")
        assert tab.locator("#messages b").count() == 0  # text, never markup
    assert page.locator("#published").text_content() == "published #1"
    other.wait_for_function("document.getElementById('subscribers').textContent === '4'")
