"""Demo 8: resumable answers, Stop, abandon, expiry, batching, and the Redis store."""
import json
import threading
import time

import pytest
import requests

from demos import resume
from streamkit import answers, llm, sse
from tests.conftest import live_events, wait_until
from tests.test_relay import relay_upstreams

PROMPT = "Tell me about streaming."
TEXT = "".join(llm.reply([("user", PROMPT)])[0])  # the fake LLM's answer, 60-odd deltas
DELTAS = len(llm.reply([("user", PROMPT)])[0])


def start(base, prompt=PROMPT, fault=None, session=requests):
    response = session.post(f"{base}/resume/answers", params={"fault": fault} if fault else None,
                            json={"messages": [{"role": "user", "content": prompt}]}, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()


def calls(base):
    return requests.get(f"{base}/fake-llm/stats", timeout=5).json()["calls"]


def text_of(events):
    return "".join(json.loads(event.data)["content"] for event in events if event.event == "message")


def stream_url(base, answer, **params):
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"{base}{answer['stream']}" + (f"?{query}" if query else "")


# --- the store on its own -------------------------------------------------------------

@pytest.mark.parametrize("deltas", [["a", "bc", ""], ["ü" * 100, "x" * 200, "字" * 6000], ["z"] * 300])
def test_a_stored_answer_gives_back_every_delta_after_any_id(deltas):
    store = answers.MemoryAnswers(abandon=30, ttl=600)
    store.create("i")
    for n, delta in enumerate(deltas, 1):
        store.add("i", n, delta)
    store.finish("i", llm.DONE, len(deltas))
    for after in range(len(deltas) + 1):
        got, end, _ = store.read("i", after, 0)
        assert got == deltas[after:] and end == llm.DONE
    assert store.status("i") == (len(deltas), True)


def test_batching_holds_every_delta_and_the_last_id():
    store = answers.MemoryAnswers(abandon=30, ttl=600)
    store.create("b")

    def produce():
        for n in range(1, 41):
            store.add("b", n, f"{n} ")
            time.sleep(0.005)
        store.finish("b", llm.DONE, 40)
    threading.Thread(target=produce).start()
    wire = b"".join(answers.follow(store, "b", 0, 0.05, 15))
    events = list(sse.iter_events([wire]))
    messages = [event for event in events if event.event == "message"]
    assert text_of(events) == "".join(f"{n} " for n in range(1, 41))
    assert 2 <= len(messages) < 20 and messages[-1].id == "40"  # ~0.2 s of deltas in 50 ms batches
    assert [int(event.id) for event in messages] == sorted({int(event.id) for event in messages})
    assert events[-1].event == "done"


# --- bad input ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    return resume.create_app({"TESTING": True}).test_client()


@pytest.mark.parametrize("body, needle", [
    ("not json", "messages"), ('{"messages": []}', "1 to 100 messages"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "role"), ("[" * 5000, "messages"),
])
def test_a_bad_chat_is_a_400_naming_what_is_accepted(client, body, needle):
    response = client.post("/answers", data=body, content_type="application/json")
    assert response.status_code == 400 and needle in response.json["error"]


@pytest.mark.parametrize("path, method, status, needle", [
    ("/answers/nope/stream", "get", 404, "no answer"),
    ("/answers/AAAAAAAAAAAAAAAAAAAAAA/stream", "get", 404, "forgotten"),
    ("/answers/AAAAAAAAAAAAAAAAAAAAAA/stop", "post", 404, "no answer"),
    ("/answers/<script>/stop", "post", 404, "no answer"),
    ("/answers?fault=meteor", "post", 400, "fault must be one of"),
    ("/answers", "get", 405, "method"),
])
def test_unknown_answers_and_bad_parameters_are_json_errors(client, path, method, status, needle):
    response = getattr(client, method)(path, json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == status and needle in response.json["error"].lower()
    assert response.mimetype == "application/json"  # never HTML: a path may hold markup


@pytest.mark.live
@pytest.mark.parametrize("query, header, needle", [
    ("batch_ms=1001", None, "batch_ms must be an integer from 0 to 1000"),
    ("heartbeat=0", None, "heartbeat must be a number from 0.05 to 60"),
    ("", "abc", "lastEventId must be an integer from 0 to"),
    ("lastEventId=9999", None, "lastEventId must be an integer from 0 to"),
])
def test_live_bad_stream_parameters_are_400(live_server, query, header, needle):
    answer = start(live_server.url, "3+5=?")
    response = requests.get(stream_url(live_server.url, answer) + f"?{query}",
                            headers={"Last-Event-ID": header} if header else None, timeout=5)
    assert response.status_code == 400 and needle in response.json()["error"], response.text


# --- one worker: the answer, resumed -------------------------------------------------------

@pytest.mark.live
def test_live_an_answer_is_created_then_streamed_with_an_id_per_delta(live_server):
    before = calls(live_server.url)
    answer = start(live_server.url)
    assert set(answer) == {"id", "stream"} and len(answer["id"]) == 22
    assert answer["stream"] == f"/resume/answers/{answer['id']}/stream"  # absolute, under the hub's prefix
    stream = live_events(stream_url(live_server.url, answer))
    assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    messages = stream.of_type("message")
    assert [event.id for event in messages] == [str(n) for n in range(1, DELTAS + 1)]
    assert text_of(stream.events) == TEXT and [e.event for e in stream.events[-2:]] == ["usage", "done"]
    again = live_events(stream_url(live_server.url, answer), headers={"Last-Event-ID": str(DELTAS)})
    assert [event.event for event in again.events] == ["usage", "done"]  # after the end: the end again
    assert calls(live_server.url) == before + 1


def cut_read(url, cut):
    """Read `url` and hang up after `cut` bytes of its body: returns the events that
    arrived whole, and the parser's last event id."""
    wire = b""
    with requests.get(url, stream=True, timeout=10) as response:
        for chunk in response.iter_content(chunk_size=None):
            wire += chunk
            if len(wire) >= cut:
                break
    parser = sse.EventParser()
    return parser.feed(wire[:cut]), parser.last_event_id


@pytest.mark.live
@pytest.mark.parametrize("where", ["between events", "mid-event", "mid-character"])
def test_live_a_cut_anywhere_resumes_with_nothing_lost_or_repeated(live_server, where):
    before = calls(live_server.url)
    answer = start(live_server.url, "用中文介绍流式输出" if where == "mid-character" else PROMPT)
    whole = live_events(stream_url(live_server.url, answer))  # a reader that was never cut
    url = stream_url(live_server.url, answer)
    wire = whole_body(url)
    ends = [i + 2 for i in range(len(wire)) if wire[i:i + 2] == b"\n\n"]
    cut = {"between events": ends[4], "mid-event": ends[4] + 9,
           "mid-character": next(i for i in range(ends[4], len(wire)) if wire[i] >= 0xC0) + 1}[where]
    first, last_id = cut_read(url, cut)
    assert last_id == str(sum(event.event == "message" for event in first))
    rest = live_events(url, headers={"Last-Event-ID": last_id})
    assert text_of(first) + text_of(rest.events) == text_of(whole.events)
    ids = [event.id for event in first + rest.events if event.event == "message"]
    assert ids == [str(n) for n in range(1, len(ids) + 1)]  # none lost, none repeated
    assert calls(live_server.url) == before + 1


def whole_body(url):
    with requests.get(url, stream=True, timeout=10) as response:
        return b"".join(response.iter_content(chunk_size=None))


@pytest.mark.live
def test_live_twenty_readers_of_one_answer_see_the_same_text(live_server):
    before = calls(live_server.url)
    answer = start(live_server.url)
    results = [None] * 20

    def read(i):
        time.sleep(i * 0.05)  # some join at the start, some mid-answer
        results[i] = live_events(stream_url(live_server.url, answer))
    threads = [threading.Thread(target=read, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert all(text_of(stream.events) == TEXT for stream in results)
    assert calls(live_server.url) == before + 1


@pytest.mark.live
def test_live_batching_keeps_the_text_and_resumes(live_server):
    answer = start(live_server.url)
    batched = live_events(stream_url(live_server.url, answer, batch_ms=200))
    messages = batched.of_type("message")
    assert text_of(batched.events) == TEXT and messages[-1].id == str(DELTAS)
    assert len(messages) < DELTAS / 4  # ~2 s of deltas, at most 5 events a second
    gaps = [b - a for a, b in zip(batched.arrivals, batched.arrivals[1:len(messages)])]
    assert min(gaps) >= 0.15  # never more often than one per 200 ms (a little slack)
    resumed = live_events(stream_url(live_server.url, answer, batch_ms=1000), headers={"Last-Event-ID": "10"})
    assert text_of(resumed.events) == "".join(llm.reply([("user", PROMPT)])[0][10:])


# --- Stop, abandon, expiry -----------------------------------------------------------------

@pytest.mark.live
def test_live_stop_closes_the_llm_and_ends_every_reader(start_server):
    server = start_server(env={"RESUME_ABANDON_S": "60"})
    answer = start(server.url, fault="stall")  # the LLM goes silent after 2 deltas
    readers = [requests.get(stream_url(server.url, answer, heartbeat=0.2), stream=True, timeout=10) for _ in range(3)]
    events = [sse.iter_events(reader.iter_content(chunk_size=None)) for reader in readers]
    for each in events:
        assert [next(each).id for _ in range(llm.FAULT_AT - 1)] == ["1", "2"]
    assert relay_upstreams(server) == 1
    stopped = requests.post(f"{server.url}{answer['stream'][:-7]}/stop", timeout=5)
    assert stopped.status_code == 202
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)  # the LLM's connection: closed
    for each in events:
        end = next(each)
        assert end.event == "stopped" and json.loads(end.data) == {"at": 2, "reason": "stop requested"}
    later = live_events(stream_url(server.url, answer))  # a reader after the Stop sees the same end
    assert text_of(later.events) == "You asked" and later.events[-1].event == "stopped"


@pytest.mark.live
def test_live_an_unread_answer_is_abandoned_and_a_finished_one_expires(start_server):
    server = start_server(env={"RESUME_ABANDON_S": "0.6", "RESUME_TTL_S": "1.5"})
    read = start(server.url, fault="stall")
    unread = start(server.url, fault="stall")
    with requests.get(stream_url(server.url, read, heartbeat=0.1), stream=True, timeout=10) as reader:
        chunks = reader.iter_content(chunk_size=None)
        deadline = time.monotonic() + 1.2  # twice RESUME_ABANDON_S, reading all along
        while time.monotonic() < deadline:
            next(chunks)
        status = requests.get(stream_url(server.url, unread), timeout=5)
        assert status.status_code == 200
        assert list(sse.iter_events([status.content]))[-1].data == '{"at": 2, "reason": "nobody read it for RESUME_ABANDON_S"}'
        assert requests.get(f"{server.url}/resume/stats", timeout=5).json()["running"] == 1  # the one being read
    assert wait_until(lambda: requests.get(f"{server.url}/resume/stats", timeout=5).json()["running"] == 0, 2)
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)
    gone = wait_until(lambda: requests.get(stream_url(server.url, unread), timeout=5).status_code == 404, 3)
    assert gone  # forgotten RESUME_TTL_S after it ended


@pytest.mark.live
def test_live_an_upstream_failure_is_stored_as_the_answers_end(live_server):
    answer = start(live_server.url, fault="drop")
    first = live_events(stream_url(live_server.url, answer))
    again = live_events(stream_url(live_server.url, answer), headers={"Last-Event-ID": "1"})
    assert first.events[-1].event == again.events[-1].event == "relay-error"
    assert first.events[-1].data == again.events[-1].data


@pytest.mark.live
def test_live_an_llm_error_before_the_first_byte_is_the_posts_status(live_server):
    response = requests.post(f"{live_server.url}/resume/answers", params={"fault": "429"},
                             json={"messages": [{"role": "user", "content": "x"}]}, timeout=5)
    assert response.status_code == 429 and "Rate limit" in response.json()["error"]


# --- several workers: Redis Streams ---------------------------------------------------------

def on_worker(server, pid=None, avoid=None, tries=60):
    """A keep-alive session whose connection a given worker serves (or any but `avoid`)."""
    for _ in range(tries):
        session = requests.Session()
        worker = session.get(f"{server.url}/resume/stats", timeout=5).json()["worker"]
        if (pid is None or worker == pid) and worker != avoid:
            return session, worker
        session.close()
    pytest.fail(f"no connection landed on the worker wanted in {tries} tries")


@pytest.mark.live
def test_live_two_workers_share_answers_and_stop_through_redis(redis_server, start_server):
    server = start_server(workers=2, env={"REDIS_URL": redis_server.url, "RESUME_ABANDON_S": "60"})
    owner_session, owner = on_worker(server)
    other_session, other = on_worker(server, avoid=owner)
    answer = start(server.url, fault="stall", session=owner_session)  # runs on `owner`
    def reader(session, last_id=None):
        response = session.get(stream_url(server.url, answer, heartbeat=0.2), stream=True, timeout=10,
                               headers={"Last-Event-ID": last_id} if last_id else None)
        assert response.status_code == 200, response.text
        return sse.iter_events(response.iter_content(chunk_size=None))
    readers = {owner: reader(owner_session)}
    assert [next(readers[owner]).id for _ in range(2)] == ["1", "2"]
    readers[other] = reader(other_session, "1")
    assert next(readers[other]).id == "2"  # resumed on the other worker: after 1, nothing repeated
    # Stop reaches the worker that runs the call: sent to the other one.
    third, _ = on_worker(server, pid=other)
    assert third.post(f"{server.url}{answer['stream'][:-7]}/stop", timeout=5).status_code == 202
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)
    for pid in (owner, other):
        end = next(readers[pid])
        assert end.event == "stopped" and json.loads(end.data)["at"] == 2, pid


@pytest.mark.live
def test_live_a_whole_answer_reads_the_same_from_either_worker(redis_server, start_server):
    server = start_server(workers=2, env={"REDIS_URL": redis_server.url})
    session, owner = on_worker(server)
    answer = start(server.url, session=session)
    other, _ = on_worker(server, avoid=owner)
    stream = other.get(stream_url(server.url, answer), stream=True, timeout=10)
    events = list(sse.iter_events(stream.iter_content(chunk_size=None)))
    assert text_of(events) == TEXT and events[-1].event == "done"


@pytest.mark.live
def test_live_redis_down_is_a_503_and_a_clear_event(redis_server, start_server):
    server = start_server(env={"REDIS_URL": redis_server.url, "RESUME_ABANDON_S": "0.5"})
    answer = start(server.url, fault="stall")
    with requests.get(stream_url(server.url, answer, heartbeat=0.1), stream=True, timeout=10) as reader:
        events = sse.iter_events(reader.iter_content(chunk_size=None))
        assert [next(events).id for _ in range(2)] == ["1", "2"]
        redis_server.stop()
        end = next(event for event in events if event.event != "message")
    assert end.event == "store-error" and json.loads(end.data)["status"] == 503
    response = requests.post(f"{server.url}/resume/answers", json={"messages": [{"role": "user", "content": "x"}]},
                             timeout=10)
    assert response.status_code == 503 and "Redis" in response.json()["error"]
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=3)  # nobody can read it: the LLM let go


# --- the page ---------------------------------------------------------------------------------

@pytest.mark.live
def test_page_a_dropped_connection_and_a_reload_continue_the_same_answer(page, start_server):
    server = start_server(env={"FAKE_LLM_DELAY_MS": "60"})  # ~4 s of answer: time to drop and reload
    before = calls(server.url)
    page.goto(f"{server.url}/resume/")
    page.fill("textarea[name=prompt]", PROMPT)
    page.click("button[type=submit]")
    page.wait_for_function("Number(document.getElementById('last-id').textContent) >= 3")
    page.click("#drop")  # the reader reconnects, sending the last id it saw
    page.wait_for_function("document.getElementById('connections').textContent === '2'")
    assert "· Last-Event-ID: " in page.text_content("#wire")
    where = page.evaluate("location.hash")
    assert where.startswith("#answer=")
    page.reload()  # mid-answer: the page finds the answer in its URL and reads it again
    page.wait_for_function("document.getElementById('status').value.startsWith('done')", timeout=15_000)
    assert page.evaluate("document.getElementById('answer').textContent") == TEXT
    assert page.evaluate("location.hash") == where and calls(server.url) == before + 1


@pytest.mark.live
def test_page_stop_stops_the_answer(page, start_server):
    server = start_server()
    page.goto(f"{server.url}/resume/")
    page.select_option("select[name=fault]", "stall")
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('last-id').textContent === '2'")
    page.click("#stop")
    page.wait_for_function("document.getElementById('status').value.startsWith('stopped at delta 2')")
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)


@pytest.mark.live
def test_live_a_silent_llm_ends_the_answer_after_upstream_timeout(start_server):
    server = start_server(env={"UPSTREAM_TIMEOUT": "0.5"})
    answer = start(server.url, fault="stall")
    stream = live_events(stream_url(server.url, answer, heartbeat=0.1))
    assert text_of(stream.events) == "You asked" and stream.events[-1].event == "relay-error"
    assert json.loads(stream.events[-1].data)["status"] == 504
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)


@pytest.mark.live
@pytest.mark.parametrize("command", [("flask", "--app", "demos.resume", "run"), ("demos", "serve", "resume")],
                         ids=["flask run", "python -m demos serve"])
def test_live_the_demo_runs_alone(run_alone, command):
    # Alone it serves the fake LLM itself, on Werkzeug's threads or gevent's own server.
    url = run_alone(*command, ready="/stats")
    response = requests.post(f"{url}/answers", json={"messages": [{"role": "user", "content": "3+5=?"}]}, timeout=5)
    assert response.status_code == 201 and response.json()["stream"].startswith("/answers/")
    stream = live_events(url + response.json()["stream"], headers={"Last-Event-ID": "0"})
    assert text_of(stream.events) == "3 + 5 = 8" and stream.events[-1].event == "done"


@pytest.mark.live
def test_live_answers_one_after_another_share_one_connection_to_the_llm(start_server):
    server = start_server()
    for _ in range(3):
        stream = live_events(stream_url(server.url, start(server.url, "3+5=?")))
        assert stream.events[-1].event == "done"
    assert wait_until(lambda: relay_upstreams(server) == 1, timeout=2)  # kept in the pool, not closed


def test_the_resume_benchmark_runs_and_every_answer_comes_whole():
    # A small run of bench/resume.py: behaviour only (every answer whole after its cuts,
    # one upstream call per answer), no timings.
    import subprocess
    import sys

    from tests.conftest import ROOT
    result = subprocess.run([sys.executable, "bench/resume.py", "--answers", "20", "--delay-ms", "20",
                             "--cuts", "1", "--ramp", "0.5", "--skip-batching", "--stored", "20"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    load = [line for line in result.stdout.splitlines() if line.startswith("| 20 |")]
    assert load, result.stdout
    cells = [cell.strip() for cell in load[0].strip("|").split("|")]
    assert cells[-5:-3] == ["20", "20"], result.stdout  # whole, upstream calls
    assert "fake, English" in result.stdout  # the memory table
