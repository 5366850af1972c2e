"""Demo 3: the relay — both dialects, every fault, the key kept secret, the upstream
closed when the client leaves, on every server the kit supports."""
import contextlib
import http.server
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from flask import Flask, Response
from flask import request as incoming
from werkzeug.serving import make_server

from demos import fake_llm, relay
from streamkit import llm, relaying, sse
from tests.conftest import ROOT, LiveServer, free_port, live_events, wait_until
from tests.snippets import source

SUM, SUM_TEXT = "3+5=?", "3 + 5 = 8"
KEY = "sk-test-Zq81-never-shown-anywhere"


@contextlib.contextmanager
def serving(app):
    """`app` on Werkzeug's threaded server, the one `flask run` uses, on a free port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module", params=["openai", "dashscope"])
def flask_run(request):
    """The relay running alone (it serves the fake LLM itself), in each dialect."""
    app = relay.create_app({"UPSTREAM_DIALECT": request.param, "UPSTREAM_TIMEOUT": 0.5,
                            "FAKE_LLM_DELAY_MS": 0})
    with serving(app) as url:
        yield url


@pytest.fixture
def client():
    return relay.create_app({"TESTING": True}).test_client()


@pytest.fixture(params=["chat", "simple"])
def relay_path(request):
    """Both relays: the production one (/chat) and the simple one (/simple) share a wire."""
    return request.param


def chat(base, prompt=SUM, method="POST", proxies=None, path="chat", **params):
    """Ask the relay; return (status, events) for a stream or (status, JSON) for an error."""
    url = f"{base}/{path}"
    if method == "GET":
        response = requests.get(url, params={"q": prompt, **params}, stream=True, timeout=10)
    else:
        response = requests.post(url, params=params, stream=True, timeout=10, proxies=proxies,
                                 json={"messages": [{"role": "user", "content": prompt}]})
    with response:
        if response.headers["Content-Type"] != "text/event-stream; charset=utf-8":
            return response.status_code, response.json()
        return response.status_code, list(sse.iter_events(response.iter_content(chunk_size=None)))


def text_of(events):
    return "".join(json.loads(event.data)["content"] for event in events if event.event == "message")


# --- the page, the settings, the requests it accepts ----------------------------------------

def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b'data-chat-url="/chat"' in response.data and b"the built-in fake LLM" in response.data
    assert b'<option value="drop">' in response.data


def test_page_with_a_real_provider_shows_no_key_and_no_faults():
    app = relay.create_app({"TESTING": True, "UPSTREAM_BASE_URL": "https://api.example.com/v1/",
                            "UPSTREAM_API_KEY": KEY, "UPSTREAM_MODEL": "gpt-4o-mini"})
    page = app.test_client().get("/").get_data(as_text=True)
    assert "api.example.com" in page and "gpt-4o-mini" in page and KEY not in page
    assert '<option value="drop">' not in page and "disabled" in page
    assert app.config["UPSTREAM_BASE_URL"] == "https://api.example.com/v1"


@pytest.mark.parametrize("config, message", [
    ({"UPSTREAM_DIALECT": "anthropic"}, "UPSTREAM_DIALECT must be one of openai, dashscope"),
    ({"UPSTREAM_BASE_URL": "api.openai.com/v1", "UPSTREAM_MODEL": "m"}, "UPSTREAM_BASE_URL must be an http\\(s\\) URL"),
    ({"UPSTREAM_BASE_URL": "ftp://x/v1", "UPSTREAM_MODEL": "m"}, "UPSTREAM_BASE_URL must be an http\\(s\\) URL"),
    ({"UPSTREAM_BASE_URL": f"https://me:{KEY}@x/v1", "UPSTREAM_MODEL": "m"}, "UPSTREAM_BASE_URL must not hold"),
    ({"UPSTREAM_BASE_URL": "https://x/v1"}, "UPSTREAM_MODEL is required"),
    ({"UPSTREAM_API_KEY": KEY}, "UPSTREAM_API_KEY is set without UPSTREAM_BASE_URL"),
    ({"UPSTREAM_TIMEOUT": "soon"}, "UPSTREAM_TIMEOUT must be a number of seconds from 0.1 to 600"),
    ({"UPSTREAM_TIMEOUT": "0"}, "UPSTREAM_TIMEOUT must be a number of seconds from 0.1 to 600"),
])
def test_settings_are_checked_at_startup(config, message):
    with pytest.raises(ValueError, match=message) as refused:
        relay.create_app(config)
    assert KEY not in str(refused.value)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("UPSTREAM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("UPSTREAM_MODEL", "llama3.2")
    monkeypatch.setenv("UPSTREAM_TIMEOUT", "12.5")
    config = relay.create_app().config
    assert (config["UPSTREAM_BASE_URL"], config["UPSTREAM_MODEL"], config["UPSTREAM_TIMEOUT"],
            config["UPSTREAM_DIALECT"]) == ("http://127.0.0.1:11434/v1", "llama3.2", 12.5, "openai")


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "GET"}, "q must be a prompt of 1 to 8000 characters"),
    ({"method": "GET", "query_string": {"q": " "}}, "q must be a prompt"),
    ({"method": "GET", "query_string": {"q": "x" * 8001}}, "q must be a prompt"),
    ({"data": "not json"}, "the body must be JSON"),
    ({"json": {"messages": []}}, "the body must be JSON"),
    ({"json": {"messages": [{"role": "user", "content": "x"}] * 101}}, "the body must be JSON"),
    ({"json": {"messages": [{"role": "tool", "content": "x"}]}}, "each message must be"),
    ({"json": {"messages": [{"role": "user", "content": ["x"]}]}}, "each message must be"),
    ({"json": {"messages": [{"role": "user", "content": "x" * 8001}]}}, "each message must be"),
    ({"json": {"messages": [{"role": "user", "content": "x"}]}, "query_string": {"fault": "boom"}},
     "fault must be one of"),
])
def test_bad_input(client, relay_path, kwargs, message):
    kwargs = dict(kwargs)  # the table is shared by both relays
    response = client.open(f"/{relay_path}", method=kwargs.pop("method", "POST"), **kwargs)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_faults_are_never_sent_to_a_real_provider():
    app = relay.create_app({"TESTING": True, "UPSTREAM_BASE_URL": "https://api.example.com/v1",
                            "UPSTREAM_MODEL": "m"})
    response = app.test_client().get("/chat?q=hi&fault=drop")
    assert response.status_code == 400
    assert "fault needs the built-in fake LLM" in response.get_json()["error"]


def test_raw_upstream_bytes_are_refused_when_a_key_is_set():
    # A key quoted by the provider may be cut across two reads, where no mask can find it.
    app = relay.create_app({"TESTING": True, "UPSTREAM_BASE_URL": "https://api.example.com/v1",
                            "UPSTREAM_MODEL": "m", "UPSTREAM_API_KEY": KEY})
    response = app.test_client().get("/chat?q=hi&debug=1")
    assert response.status_code == 400 and "without UPSTREAM_API_KEY" in response.get_json()["error"]
    page = app.test_client().get("/").get_data(as_text=True)
    assert 'name="debug" disabled' in page and KEY not in page


def test_without_a_server_socket_the_fake_cannot_be_reached(client):
    # The Flask test client has no socket, so no address of our own to call.
    response = client.get("/chat?q=hi")
    assert response.status_code == 502
    assert "needs a TCP server" in response.get_json()["error"]


# --- the dialects, without a network --------------------------------------------------------

def events_of(wire):
    return sse.iter_events([wire.encode()])


def test_openai_chunks_become_deltas_usage_and_done():
    wire = ('data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
            'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
            'data: {"choices":[{"index":0,"delta":{"content":" 你"}}]}\n\n'
            'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
            "data: [DONE]\n\n")
    # Frames are bytes, encoded once: the response writes them as they are.
    assert b"".join(llm.from_openai(events_of(wire))).decode() == (
        'data: {"content": "Hi"}\n\ndata: {"content": " 你"}\n\n'
        'event: usage\ndata: {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}\n\n'
        "event: done\ndata: [DONE]\n\n")


def test_openai_without_usage_or_done():
    # No usage chunk: no usage event. A finish_reason but no [DONE] (some servers): still done.
    wire = 'data: {"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}\n\n'
    assert list(llm.from_openai(events_of(wire))) == [b'data: {"content": "a"}\n\n', llm.DONE]


@pytest.mark.parametrize("wire, message", [
    ('data: {"choices":[{"delta":{"content":"a"}}]}\n\n', "ended the stream before the answer was complete"),
    ('data: {"error":{"message":"overloaded"}}\n\n', "the upstream failed: overloaded"),
])
def test_openai_failures(wire, message):
    with pytest.raises(llm.UpstreamError, match=message):
        list(llm.from_openai(events_of(wire)))


def test_dashscope_whole_texts_become_deltas():
    texts = ["最近", "最近的公园", "最近的公园是公园。"]
    wire = "".join(
        f'id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{{"output":{{"finish_reason":"{finish}","text":"{text}"}},'
        f'"usage":{{"output_tokens":{n},"input_tokens":85}},"request_id":"r"}}\n\n'
        for n, (text, finish) in enumerate(zip(texts, ["null", "null", "stop"]), 1))
    frames = [frame.decode() for frame in llm.from_dashscope(events_of(wire))]
    assert [json.loads(frame[6:])["content"] for frame in frames[:3]] == ["最近", "的公园", "是公园。"]
    assert json.loads(frames[3].split("data: ")[1]) == {
        "prompt_tokens": 85, "completion_tokens": 3, "total_tokens": 88}
    assert frames[4] == llm.DONE.decode()


@pytest.mark.parametrize("wire, message", [
    ('id:1\nevent:error\n:HTTP_STATUS/400\ndata:{"code":"InvalidParameter","message":"bad input"}\n\n',
     "the upstream failed: bad input"),
    ('event:result\ndata:{"output":{"text":"ab"}}\n\nevent:result\ndata:{"output":{"text":"xy"}}\n\n',
     "stopped growing"),
    ('event:result\ndata:{"output":{"text":"ab","finish_reason":"null"}}\n\n', "ended the stream before"),
])
def test_dashscope_failures(wire, message):
    with pytest.raises(llm.UpstreamError, match=message):
        list(llm.from_dashscope(events_of(wire)))


# --- over real HTTP: the relay alone under `flask run`'s server -----------------------------

@pytest.mark.parametrize("method", ["POST", "GET"])
def test_relays_the_answer(flask_run, relay_path, method):
    status, events = chat(flask_run, method=method, path=relay_path)
    assert status == 200
    assert text_of(events) == SUM_TEXT
    assert [event.event for event in events[-2:]] == ["usage", "done"]
    assert json.loads(events[-2].data) == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert events[-1].data == "[DONE]"


def test_first_bytes_go_out_at_once(flask_run, relay_path):
    # Before the first token: a slow model must not leave the client without headers.
    response = requests.get(f"{flask_run}/{relay_path}", params={"q": SUM}, stream=True, timeout=10)
    with response:
        assert next(response.iter_content(chunk_size=None)) == sse.PING.encode()


def test_a_silent_upstream_still_gets_pings():
    """While the LLM is silent the relay keeps writing: a proxy does not cut the stream
    as idle, and a write is how a departed client is noticed. The watch wakes a relay
    that has written nothing for HEARTBEAT s, so writes are never much further apart."""
    app = relay.create_app({"UPSTREAM_TIMEOUT": 2.5, "FAKE_LLM_DELAY_MS": 0})
    with serving(app) as url:
        response = requests.get(url + "/chat", params={"q": "hello", "fault": "stall"}, stream=True, timeout=10)
        with response:
            writes = [(time.monotonic(), chunk) for chunk in response.iter_content(chunk_size=None)]
    last_token = max(i for i, (_, chunk) in enumerate(writes) if b'"content"' in chunk)
    silence = writes[last_token:]
    pings = [chunk for _, chunk in silence[1:-1]]
    assert len(pings) >= 3 and set(pings) == {sse.PING_BYTES}
    gaps = [later - earlier for (earlier, _), (later, _) in zip(silence, silence[1:])]
    assert max(gaps) < 2 * relaying.HEARTBEAT + 0.5, gaps
    assert b"event: relay-error" in silence[-1][1]  # and UPSTREAM_TIMEOUT still ends it


def test_a_slow_client_is_not_taken_for_a_silent_upstream():
    # The reader waits for room in a full mailbox while the client is slow: that is not
    # the LLM's silence, and the watch must not cut the answer off with a 504.
    with serving(fake_llm.create_app({"FAKE_LLM_DELAY_MS": 0})) as fake:
        upstream = requests.post(fake + "/v1/chat/completions", stream=True, timeout=5,
                                 json={"model": "m", "stream": True, "messages": [{"role": "user", "content": SUM}]})
        relay_ = relaying.Relay(upstream, "openai", "", timeout=0.1)
        relay_.sent = float("inf")  # no pings into the mailbox during the test
        for _ in range(relaying.MAILBOX):
            relay_.mailbox.put_nowait(b"data: {}\n\n")
        relay_.heard -= 1  # nothing read for longer than its timeout
        relaying.Relay.live.add(relay_)
        try:
            relaying.visit(time.monotonic())
            assert not relay_.timed_out
            relay_.mailbox.get_nowait()  # the client took a frame: now the silence is the LLM's
            relaying.visit(time.monotonic())
            assert relay_.timed_out
        finally:
            relaying.Relay.live.discard(relay_)
            upstream.close()


def test_relays_chinese_across_split_reads(flask_run, relay_path):
    status, events = chat(flask_run, "你好", fault="split", path=relay_path)
    assert status == 200 and text_of(events) == llm.CHINESE


@pytest.mark.parametrize("fault", ["nospace", "crlf", "split"])
def test_valid_but_unusual_wire_gives_the_right_text(flask_run, relay_path, fault):
    status, events = chat(flask_run, fault=fault, path=relay_path)
    assert status == 200 and text_of(events) == SUM_TEXT and events[-1].event == "done"


@pytest.mark.parametrize("fault, status, message", [
    ("401", 401, "the upstream answered 401: Incorrect API key provided (simulated)."),
    ("429", 429, "the upstream answered 429: Rate limit reached (simulated)."),
    ("500", 502, "the upstream answered 500: The server had an error"),
])
def test_errors_before_the_first_byte_are_http_statuses(flask_run, relay_path, fault, status, message):
    for method in ("POST", "GET"):
        got, body = chat(flask_run, method=method, fault=fault, path=relay_path)
        assert got == status and body["error"].startswith(message)


@pytest.mark.parametrize("fault, message, status", [
    ("drop", "the connection to the upstream broke mid-answer", 502),
    ("stall", "the upstream went silent for longer than UPSTREAM_TIMEOUT", 504),
    ("malformed", "the upstream sent an event the relay could not read", 502),
    ("error-event", "the upstream failed: The model crashed (simulated).", 502),
])
def test_errors_mid_stream_are_relay_error_events(flask_run, relay_path, fault, message, status):
    got, events = chat(flask_run, "hello", fault=fault, path=relay_path)
    assert got == 200
    assert text_of(events).startswith("You asked")  # what arrived before the fault was relayed
    assert [event.event for event in events[-1:]] == ["relay-error"]  # and then the end, no done
    assert json.loads(events[-1].data) == {"message": message, "status": status}


def test_debug_shows_the_upstream_reads(flask_run):
    _, events = chat(flask_run, debug="1")
    upstream = "".join(json.loads(event.data) for event in events if event.event == "upstream")
    assert ('"delta":{"content":" +"}' in upstream) or ('"text":"3 +"' in upstream)
    assert text_of(events) == SUM_TEXT


def test_the_fake_is_reached_without_an_environment_proxy(flask_run, relay_path, monkeypatch):
    # Behind a corporate proxy HTTP_PROXY is set, and would catch our call to ourselves.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    status, events = chat(flask_run, proxies={"http": None}, path=relay_path)  # our own request goes direct
    assert status == 200 and text_of(events) == SUM_TEXT


def test_the_host_header_cannot_steer_the_relay(flask_run, relay_path):
    # The fake LLM is called at the address the server listens on, whatever Host says.
    response = requests.get(f"{flask_run}/{relay_path}", params={"q": SUM}, timeout=10,
                            headers={"Host": "169.254.169.254:80"})
    assert response.status_code == 200 and text_of(sse.iter_events([response.content])) == SUM_TEXT


# --- one connection to the LLM for many chats ------------------------------------------------

class KeepAliveLLM(http.server.ThreadingHTTPServer):
    """An OpenAI-style upstream on HTTP/1.1 keep-alive, as real providers are, that
    notes each request's connection (the client's port) and cookie. `drop` closes a
    reused connection without a word (the race of a server letting an idle connection
    go just as the client sends on it); `linger` goes on for that many seconds after
    `data: [DONE]` before the body's end, writing comments or, with `trickle`, a few
    bytes at a time of one long HTTP chunk, and notes when the client hung up."""

    daemon_threads = True

    def __init__(self, drop=False, linger=0.0, trickle=False):
        self.drop, self.linger, self.trickle, self.requests, self.hung_up = drop, linger, trickle, [], []
        super().__init__(("127.0.0.1", 0), self.Handler)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            server, port = self.server, self.client_address[1]
            self.rfile.read(int(self.headers["Content-Length"]))
            reused = any(seen == port for seen, _ in server.requests)
            server.requests.append((port, self.headers.get("Cookie")))
            if server.drop and reused:
                self.close_connection = True  # not a byte of an answer
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Set-Cookie", "llm-session=for-one-user; Path=/")
            self.end_headers()
            for piece in ["3 + 5", " = 8"]:
                self.chunk(f'data: {{"choices":[{{"index":0,"delta":{{"content":"{piece}"}}}}]}}\n\n')
            self.chunk('data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
            until = time.monotonic() + server.linger
            if server.trickle:
                self.wfile.write(b"%x\r\n" % (1 << 20))  # a chunk of 1 MiB, 1 KiB at a time
            while time.monotonic() < until:
                if select.select([self.connection], [], [], 0.05)[0] and not self.connection.recv(1, socket.MSG_PEEK):
                    server.hung_up.append(time.monotonic())
                    self.close_connection = True
                    return
                if server.trickle:
                    self.wfile.write(b": " + b"x" * 1021 + b"\n")
                    self.wfile.flush()
                else:
                    self.chunk(": still here\n\n")
            self.wfile.write(b"0\r\n\r\n")

        def chunk(self, text):
            data = text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()


def readers_done():
    """The relay's reader threads have ended: each has put its connection back in the
    pool, or closed it, after its client's answer ended."""
    return wait_until(lambda: not any(thread.name == "relay reader" for thread in threading.enumerate()), 5)


@contextlib.contextmanager
def relay_to(llm):
    threading.Thread(target=llm.serve_forever, daemon=True).start()
    app = relay.create_app({"UPSTREAM_BASE_URL": f"http://127.0.0.1:{llm.server_port}/v1", "UPSTREAM_MODEL": "m"})
    try:
        with serving(app) as url:
            yield url
    finally:
        llm.shutdown()
        llm.server_close()


def test_chats_share_one_connection_to_the_llm_and_no_cookies():
    # A chat after the first skips the TCP (and, with a real provider, TLS) handshake.
    llm = KeepAliveLLM()
    with relay_to(llm) as url:
        for _ in range(3):
            status, events = chat(url)
            assert status == 200 and text_of(events) == SUM_TEXT and events[-1].event == "done"
            assert readers_done()
    ports = {port for port, _ in llm.requests}
    assert len(llm.requests) == 3 and len(ports) == 1, llm.requests
    assert [cookie for _, cookie in llm.requests] == [None] * 3  # one user's cookie never goes with another's chat


def test_a_connection_closed_unanswered_is_asked_again_afresh():
    llm = KeepAliveLLM(drop=True)
    with relay_to(llm) as url:
        for _ in range(2):
            status, events = chat(url)
            assert status == 200 and text_of(events) == SUM_TEXT
            assert readers_done()
    # The second chat went out on the kept connection, found it closed, and went again on a new one.
    first, dropped, again = [port for port, _ in llm.requests]
    assert first == dropped != again


@pytest.mark.parametrize("trickle", [False, True], ids=["comments", "one-long-chunk"])
def test_a_body_that_goes_on_after_the_answer_keeps_neither_client_nor_connection(monkeypatch, trickle):
    monkeypatch.setattr(relaying, "AFTER_ANSWER", (1.0, 1 << 20))  # the time runs out first
    llm = KeepAliveLLM(linger=5, trickle=trickle)
    with relay_to(llm) as url:
        started = time.monotonic()
        status, events = chat(url)
        assert status == 200 and text_of(events) == SUM_TEXT and events[-1].event == "done"
        assert time.monotonic() - started < 0.7  # the client's answer ended at [DONE], not after
        assert wait_until(lambda: llm.hung_up, timeout=4)  # the relay let the connection go
        assert llm.hung_up[0] - started < 2.5
        assert chat(url)[0] == 200
    assert len({port for port, _ in llm.requests}) == 2


# --- over gunicorn: disconnects, the key, python -m demos serve -----------------------------

def relay_upstreams(server):
    """TCP connections a gunicorn worker has open *to* its own port: the relay's
    upstream sockets (Linux /proc). Ones fully closed on our side are not counted."""
    inodes = set()
    for pid in server.worker_pids():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        count += remote == server.port and local != server.port and fields[9] in inodes
    return count


def fake_streams(server):
    return requests.get(server.url + "/fake-llm/stats", timeout=5).json()["open_streams"]


@pytest.mark.live
def test_live_relay_under_gunicorn(live_server):
    stream = live_events(f"{live_server.url}/relay/chat?q=3%2B5%3D%3F")
    assert stream.status == 200 and text_of(stream.events) == SUM_TEXT
    assert stream.events[-1].event == "done"


# A server of their own: a complete chat leaves its connection to the fake in the relay's pool.

@pytest.mark.live
def test_live_chats_share_one_connection_to_the_llm(start_server):
    server = start_server()
    for _ in range(4):
        stream = live_events(f"{server.url}/relay/chat?q=3%2B5%3D%3F")
        assert stream.events[-1].event == "done"
    assert relay_upstreams(server) == 1  # kept for the next chat (gunicorn lets it go after 2 s idle)


@pytest.mark.live
def test_live_client_abort_closes_the_upstream(start_server, relay_path):
    server = start_server()
    stream = live_events(f"{server.url}/relay/{relay_path}?q=hello", limit=3)  # then hang up
    assert text_of(stream.events).startswith("You asked")
    assert wait_until(lambda: fake_streams(server) == 0, timeout=2)  # the LLM stopped
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)  # closed, not kept


@pytest.mark.live
def test_live_head_request_calls_no_upstream(start_server, relay_path):
    """A HEAD used to open the upstream and never close it: the body that owns it
    never starts. curl -I "http://127.0.0.1:8000/relay/chat?q=hi" showed it."""
    server = start_server()
    response = requests.head(f"{server.url}/relay/{relay_path}?q=hello", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert fake_streams(server) == 0 and relay_upstreams(server) == 0


@pytest.mark.live
def test_live_client_abort_closes_a_silent_upstream(start_server):
    # The fake stalls: no byte arrives, yet the relay's pings notice the departed client.
    server = start_server()
    response = requests.get(f"{server.url}/relay/chat", params={"q": "hello", "fault": "stall"},
                            stream=True, timeout=10)
    events = sse.iter_events(response.iter_content(chunk_size=None))
    assert [next(events).event for _ in range(llm.FAULT_AT - 1)] == ["message"] * 2
    assert relay_upstreams(server) == 1
    response.close()
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)


@pytest.mark.parametrize("path", ["chat", "simple"])
def test_a_200_that_is_not_an_event_stream_is_a_502(path):
    # An upstream that ignores "stream": true (or a proxy's HTML page) answers 200 with
    # something else: both relays say so before the first byte, as an HTTP error.
    json_llm = Flask("json-llm")
    json_llm.post("/v1/chat/completions")(lambda: {"choices": [{"message": {"content": "whole"}}]})
    with serving(json_llm) as upstream:
        app = relay.create_app({"UPSTREAM_BASE_URL": upstream + "/v1", "UPSTREAM_MODEL": "m"})
        with serving(app) as base:
            status, body = chat(base, path=path)
    assert status == 502 and body["error"].startswith("the upstream answered 200"), body


def test_the_simple_relay_is_one_short_view_and_one_generator():
    # The chapter opens with it whole: it must stay small enough to read in one go.
    lines = source("demos/relay.py", "create_app.simple", "relay_simply").splitlines()
    assert len(lines) <= 40, len(lines)
    assert "requests.post(" in "\n".join(lines) and "finally:" in "\n".join(lines)


@pytest.mark.live
def test_live_only_the_production_relay_notices_a_departed_client_while_the_llm_is_silent(start_server):
    """The difference the relay page shows with the `stall` fault: the simple relay's
    generator is blocked reading a silent LLM, writes nothing, and so learns that its
    client left only when the LLM speaks again or UPSTREAM_TIMEOUT runs out; the
    production relay pings every 0.5 s and lets the LLM go at once."""
    server = start_server(env={"UPSTREAM_TIMEOUT": "4"})
    for path, held in (("chat", False), ("simple", True)):
        response = requests.get(f"{server.url}/relay/{path}", params={"q": "hello", "fault": "stall"},
                                stream=True, timeout=10)
        events = sse.iter_events(response.iter_content(chunk_size=None))
        assert [next(events).event for _ in range(llm.FAULT_AT - 1)] == ["message"] * 2
        assert wait_until(lambda: relay_upstreams(server) == 1, timeout=2)
        response.close()
        released = wait_until(lambda: relay_upstreams(server) == 0, timeout=2)
        assert released is not held, path
        if held:  # until the timeout, which a silent LLM does not outlast
            assert wait_until(lambda: relay_upstreams(server) == 0, timeout=5)


@pytest.mark.live
def test_live_a_silent_upstream_gets_pings_then_a_timeout(start_server):
    """Under gunicorn the fake keeps its connection alive, so the relay drops the socket's
    read timeout and its watch enforces UPSTREAM_TIMEOUT (Werkzeug's server closes
    each connection, and there the socket timeout does it: tested above)."""
    server = start_server(env={"UPSTREAM_TIMEOUT": "1.5"})
    started = time.monotonic()
    response = requests.get(f"{server.url}/relay/chat", params={"q": "hello", "fault": "stall"},
                            stream=True, timeout=10)
    with response:
        wire = b"".join(response.iter_content(chunk_size=None))
    assert time.monotonic() - started < 1.5 + 1.5  # the timeout, a watch period, slack
    assert wire.count(sse.PING_BYTES) >= 3  # the first, and two or more during the silence
    last = list(sse.iter_events([wire]))[-1]
    assert last.event == "relay-error" and json.loads(last.data)["status"] == 504
    assert wait_until(lambda: relay_upstreams(server) == 0, timeout=2)


def hostile_upstream(seen):
    """A provider that quotes the API key back in every error: the worst case."""
    app = Flask("hostile")

    @app.post("/v1/chat/completions")
    def completions():
        seen.append({"headers": dict(incoming.headers), "body": incoming.get_json()})
        key = incoming.headers.get("Authorization", "").removeprefix("Bearer ")
        prompt = incoming.get_json()["messages"][-1]["content"]
        if prompt in ("401", "429", "500"):
            return {"error": {"message": f"Incorrect API key provided: {key}"}}, int(prompt)
        if prompt == "long-401":  # the key just where a message would be cut short
            return {"error": {"message": "x" * 280 + f" key {key} is wrong"}}, 401
        return Response(answer(prompt, key), mimetype="text/event-stream")

    return app


def answer(prompt, key):
    yield 'data: {"choices":[{"delta":{"content":"ok"}}]}\n\n'
    if prompt == "midstream":
        yield f'data: {{"error":{{"message":"key {key} was revoked"}}}}\n\n'
        return
    yield 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


@pytest.mark.live
def test_live_the_key_never_leaves_the_server(tmp_path):
    seen = []
    with serving(hostile_upstream(seen)) as upstream:
        server = LiveServer(tmp_path, env={
            "UPSTREAM_BASE_URL": upstream + "/v1", "UPSTREAM_API_KEY": KEY,
            "UPSTREAM_MODEL": "hostile-1", "ACCESS_LOG": "-"}).start()
        try:
            base, seen_by_client = server.url + "/relay", []
            page = requests.get(base + "/", timeout=5)
            assert page.status_code == 200 and "127.0.0.1" in page.text
            seen_by_client.append(page.text + str(page.headers))
            for prompt, status in [("hi", 200), ("midstream", 200), ("401", 401), ("429", 429), ("500", 502),
                                   ("long-401", 401)]:
                for method in ("POST", "GET"):
                    response = (requests.post(base + "/chat", json={"messages": [{"role": "user", "content": prompt}]},
                                              headers={"X-Fake-Fault": "drop"}, timeout=10)
                                if method == "POST" else requests.get(base + "/chat", params={"q": prompt}, timeout=10))
                    assert response.status_code == status, (prompt, response.text)
                    seen_by_client.append(response.text + str(response.headers))
            assert any("Incorrect API key provided: ***" in text for text in seen_by_client)
            assert any("key *** is wrong" in text for text in seen_by_client)  # masked, then cut
            assert any("key *** was revoked" in text for text in seen_by_client)
            assert requests.get(base + "/chat", params={"q": "x", "fault": "drop"}, timeout=5).status_code == 400
            raw = requests.get(base + "/chat", params={"q": "midstream", "debug": "1"}, timeout=5)
            assert raw.status_code == 400  # the upstream's raw bytes would carry the key
            seen_by_client.append(raw.text)
        finally:
            server.stop()
    log = server.log_path.read_text()
    assert "relay: the upstream answered 401" in log and "GET /relay/chat" in log  # it did log
    pieces = {KEY[start:start + 8] for start in range(len(KEY) - 7)}  # nor a piece of it
    assert not [text for text in seen_by_client + [log] for piece in pieces if piece in text]
    # The key went where it belongs, and nothing the client sent went with it:
    assert all(call["headers"]["Authorization"] == f"Bearer {KEY}" for call in seen)
    assert all("X-Fake-Fault" not in call["headers"] for call in seen)
    assert {call["body"]["model"] for call in seen} == {"hostile-1"}


@pytest.mark.live
def test_live_relay_under_python_m_demos_serve(tmp_path):
    port = free_port()
    env = {**os.environ, "FAKE_LLM_DELAY_MS": "0"}
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "demos", "serve", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: up(url + "/healthz"), timeout=15, step=0.1)
        status, events = chat(url + "/relay", "你好", fault="split")
        assert status == 200 and text_of(events) == llm.CHINESE
    finally:
        process.terminate()
        process.wait(timeout=10)


def up(url):
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


# --- the chat page in a real browser ------------------------------------------------------------

@pytest.fixture
def chat_page(live_server, page):
    page.goto(live_server.url + "/relay/")
    return page


@pytest.mark.browser
def test_page_streams_the_answer_progressively(chat_page):
    chat_page.check("input[name=relay][value=chat]")  # debug=1, the upstream's reads, is the production relay's
    chat_page.fill("textarea[name=prompt]", "hello")
    chat_page.click("button[type=submit]")
    chat_page.wait_for_function("document.getElementById('answer').textContent.length > 0")
    partial = chat_page.locator("#answer").text_content()
    chat_page.wait_for_function("document.getElementById('status').value.startsWith('done: ')")
    full = chat_page.locator("#answer").text_content()
    assert full.startswith("You asked: “hello”") and len(partial) < len(full)
    assert chat_page.locator("#ttft").text_content().endswith(" ms")
    assert float(chat_page.locator("#rate").text_content()) > 1
    assert "out," in chat_page.locator("#usage").text_content()
    assert "data: {\"content\"" in chat_page.locator("#wire").text_content()
    assert "chat.completion.chunk" in chat_page.locator("#upstream-wire").text_content()


@pytest.mark.browser
def test_stop_ends_the_answer_and_the_upstream(live_server, chat_page):
    before = fake_streams(live_server)
    chat_page.fill("textarea[name=prompt]", "hello")
    chat_page.click("button[type=submit]")
    chat_page.wait_for_function("document.getElementById('answer').textContent.length > 12")
    chat_page.click("#stop")
    assert chat_page.evaluate("document.getElementById('status').value") == "stopped"
    assert wait_until(lambda: fake_streams(live_server) == before, timeout=2)
    length = len(chat_page.locator("#answer").text_content())
    chat_page.wait_for_timeout(300)
    assert len(chat_page.locator("#answer").text_content()) == length


@pytest.mark.browser
@pytest.mark.parametrize("fault, shown", [
    ("429", "HTTP 429: the upstream answered 429: Rate limit reached"),
    ("drop", "the connection to the upstream broke mid-answer (status 502)"),
])
def test_a_simulated_failure_shows_a_readable_message(chat_page, fault, shown):
    chat_page.select_option("select[name=fault]", fault)
    chat_page.click("button[type=submit]")
    chat_page.wait_for_function("!document.getElementById('error').hidden")
    assert shown in chat_page.locator("#error").text_content()
    assert chat_page.evaluate("document.getElementById('status').value") == "failed"


@pytest.mark.browser
def test_a_prompt_holding_html_is_shown_as_text(chat_page):
    attack = '<img src=x onerror="window.pwned=1">'
    chat_page.fill("textarea[name=prompt]", attack)
    chat_page.click("button[type=submit]")
    chat_page.wait_for_function("document.getElementById('answer').textContent.includes('”.')")
    assert attack in chat_page.locator("#answer").text_content()
    assert attack in chat_page.locator("#prompt-shown").text_content()
    assert chat_page.locator("main img").count() == 0
    assert chat_page.evaluate("window.pwned") is None


@pytest.mark.browser
def test_eventsource_variant_closes_on_done(chat_page):
    chat_page.fill("textarea[name=prompt]", SUM)
    chat_page.click("#send-get")
    chat_page.wait_for_function("document.getElementById('status').value.startsWith('done: ')")
    assert chat_page.locator("#answer").text_content() == SUM_TEXT
    # The page's script is a module (no globals to inspect): it says so in the wire panel.
    assert "source.close(): EventSource will not reconnect" in chat_page.locator("#wire").text_content()
    assert chat_page.locator("#opens").text_content() == "1"


@pytest.mark.browser
def test_eventsource_without_close_asks_again(chat_page):
    # Without close(), the end of the response is a lost connection to EventSource:
    # it reconnects (after its default ~3 s) and the relay asks the LLM once more.
    chat_page.uncheck("input[name=close-on-done]")
    chat_page.fill("textarea[name=prompt]", SUM)
    chat_page.click("#send-get")
    chat_page.wait_for_function("document.getElementById('opens').textContent === '2'")
    chat_page.wait_for_function("document.getElementById('status').value.startsWith('done twice')")
    assert chat_page.locator("#answer").text_content().count(SUM_TEXT) == 2


@pytest.mark.parametrize("text", ["a\nb", "x\r\ny", "line\u2028sep", "data: forged\n\nevent: done\ndata: x", "你好"])
def test_a_delta_is_one_event_whatever_it_holds(text):
    # content() skips format_event's line splitting: json.dumps escapes every line
    # break, so no token can end the frame early or forge a field.
    events = sse.EventParser().feed(llm.content(text))
    assert len(events) == 1 and events[0].event == "message"
    assert json.loads(events[0].data) == {"content": text}


def test_the_benchmark_runs_and_every_relayed_event_arrives(tmp_path):
    # A small run of bench/relay.py: its own upstream, the kit's relay and the two
    # yardsticks (the naive relay under gunicorn, nginx as a pure proxy where it is
    # installed). Timings are not asserted here, only that it works.
    report = tmp_path / "relay.json"
    pin = ["--pin"] if len(getattr(os, "sched_getaffinity", lambda _: ())(0)) > 1 else []
    result = subprocess.run(
        [sys.executable, "bench/relay.py", "--paced", "100", "20", "--paced", "300", "30", "--burst", "2000",
         "--streams", "5", "--rate", "20", "--duration", "1", "--json", str(report), *pin],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    has_nginx = shutil.which("nginx") is not None
    assert has_nginx or os.environ.get("KIT_REQUIRE_NGINX") != "1", "KIT_REQUIRE_NGINX is set, and nginx is not on PATH"
    paths = ["direct", "relay", "simple", "naive"] + ["nginx"] * has_nginx
    assert all(f"{path} added" in result.stdout for path in paths[1:]), result.stdout
    rows = json.loads(report.read_text())
    assert [(row["rate"], row["path"]) for row in rows["paced"]] == [(rate, path) for rate in (100, 300)
                                                                      for path in paths]
    assert [row["path"] for row in rows["concurrent"]] == paths
    for row in rows["paced"] + rows["concurrent"]:
        assert row["completed"] == row["streams"] and not row["errors"], row
    assert [row["path"] for row in rows["burst"]] == ["direct", "relay", "simple"]
    assert all(row["events"] >= 2000 for row in rows["burst"][1:])  # every event, plus the ending frames
