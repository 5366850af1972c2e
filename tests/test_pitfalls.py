"""Demo 7: each production pitfall shown happening, then fixed.

Proxy buffering and idle timeouts run through a real nginx (Debian's nginx-light)
in front of a real gunicorn; the tests skip without nginx unless KIT_REQUIRE_NGINX=1
(CI), which turns the skip into a failure. The wrong worker runs bench/workers.py.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import pytest
import requests

from demos import pitfalls
from tests.conftest import ROOT, free_port, live_events, read_events, wait_until
from tests.wsclient import Client

NGINX = os.environ.get("KIT_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def client():
    return pitfalls.create_app({"TESTING": True}).test_client()


def numbers(stream):
    return [json.loads(event.data)["n"] for event in stream.of_type("message")]


def gaps(stream):
    """Seconds between the arrivals of consecutive events."""
    return [b - a for a, b in zip(stream.arrivals, stream.arrivals[1:])]


def one_by_one(stream, interval):
    return min(gaps(stream)) > interval / 2  # each event came on its own, at its own time


def in_a_lump(stream, interval):
    return stream.arrivals[-1] - stream.arrivals[0] < interval / 2  # all of them at once


# --- the stream and its knobs (Flask test client) --------------------------------

def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'data-stream-url="/stream"' in page and 'data-gzip-url="/gzip/stream"' in page
    assert "Seven streams to one host" in page and "Raw wire" in page


def test_a_finite_stream_without_an_end_signal_just_stops(client):
    # The cause of a reconnect storm: to EventSource this looks like a dropped
    # connection, and every reconnect starts the stream over.
    first = read_events(client, "/stream?count=3&interval=0.01")
    again = read_events(client, "/stream?count=3&interval=0.01")
    assert first.status == 200 and first.raw.startswith("data: ")
    assert numbers(first) == numbers(again) == [1, 2, 3]
    assert first.of_type("end") == [] and "id:" not in first.raw


def test_end_event_ids_and_204_after_the_last_id(client):
    stream = read_events(client, "/stream?count=3&interval=0.01&end=1&ids=1")
    assert [event.id for event in stream.of_type("message")] == ["1", "2", "3"]
    assert stream.events[-1].event == "end" and json.loads(stream.events[-1].data) == {"last": 3}
    done = client.get("/stream?count=3&ids=1", headers={"Last-Event-ID": "3"})
    assert done.status_code == 204 and done.data == b""  # EventSource stops for good
    resumed = read_events(client, "/stream?count=3&interval=0.01&ids=1", headers={"Last-Event-ID": "1"})
    assert numbers(resumed) == [2, 3]


def test_without_ids_a_reconnect_starts_over(client):
    stream = read_events(client, "/stream?count=2&interval=0.01", headers={"Last-Event-ID": "2"})
    assert stream.status == 200 and numbers(stream) == [1, 2]


def test_retry_is_spread_by_jitter(client):
    # Thousands of clients dropped at once come back spread over the jitter.
    delays = {read_events(client, "/stream?count=1&retry=1000&jitter=500").raw.split("\n")[0]
              for _ in range(20)}
    values = [int(line.removeprefix("retry: ")) for line in delays]
    assert all(1000 <= value <= 1500 for value in values) and len(values) > 1


def test_heartbeat_sends_bytes_at_once_and_through_every_silence(client):
    quiet = read_events(client, "/stream?count=1&delay=0.2")
    assert quiet.raw.startswith("data: ")  # nothing at all, headers included, for 0.2 s
    beating = read_events(client, "/stream?count=1&delay=0.2&heartbeat=0.05")
    assert beating.raw.startswith(": ping\n\n") and beating.raw.count(": ping\n\n") >= 3
    assert numbers(beating) == [1]


def test_bare_omits_only_the_proxy_header(client):
    kit, bare = client.get("/stream?count=1"), client.get("/stream?count=1&bare=1")
    assert kit.headers["X-Accel-Buffering"] == "no" and "X-Accel-Buffering" not in bare.headers
    assert bare.headers["Content-Type"] == kit.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    kit.close()
    bare.close()


def test_producer_is_released_when_the_stream_is_closed():
    before = len(pitfalls.RUNNING)
    frames = pitfalls.ticks(3, 0)
    assert next(frames).startswith("data: ") and len(pitfalls.RUNNING) == before + 1
    frames.close()  # what the WSGI server does when a write to the client fails
    assert len(pitfalls.RUNNING) == before


def timed_gzip_reads(client, path):
    """(seconds since the request, events decodable so far) for each body chunk."""
    response = client.get(path, headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    started, unzip, text, reads = time.monotonic(), zlib.decompressobj(wbits=31), "", []
    for chunk in response.response:
        text += unzip.decompress(chunk).decode()
        reads.append((time.monotonic() - started, text.count("\n\n")))
    response.close()
    return reads


def test_gzip_middleware_holds_the_events_until_the_end(client):
    reads = timed_gzip_reads(client, "/gzip/stream?count=4&interval=0.1")
    first_event_at = next(at for at, events in reads if events)
    assert reads[-1][1] == 4 and first_event_at > 0.25  # nothing readable before the last one


def test_gzip_middleware_flushing_each_event_streams(client):
    reads = timed_gzip_reads(client, "/gzip-flush/stream?count=4&interval=0.1")
    arrivals = [next(at for at, events in reads if events >= n) for n in range(1, 5)]
    assert arrivals[0] < 0.05 and min(b - a for a, b in zip(arrivals, arrivals[1:])) > 0.05


def test_gzip_middleware_leaves_plain_clients_and_204_alone(client):
    plain = read_events(client, "/gzip/stream?count=2&interval=0.01")
    assert "Content-Encoding" not in plain.headers and numbers(plain) == [1, 2]
    done = client.get("/gzip/stream?count=2&ids=1",
                      headers={"Last-Event-ID": "2", "Accept-Encoding": "gzip"})
    assert done.status_code == 204 and done.data == b"" and "Content-Encoding" not in done.headers


@pytest.mark.parametrize("query, headers, message", [
    ("count=0", {}, "count must be an integer from 1 to 1000"),
    ("interval=soon", {}, "interval must be a number from 0.01 to 60"),
    ("delay=61", {}, "delay must be a number from 0 to 60"),
    ("heartbeat=0", {}, "heartbeat must be a number from 0.05 to 60"),
    ("end=2", {}, "end must be an integer from 0 to 1"),
    ("ids=yes", {}, "ids must be an integer from 0 to 1"),
    ("bare=-1", {}, "bare must be an integer from 0 to 1"),
    ("retry=5", {}, "retry must be an integer from 10 to 600000"),
    ("jitter=100", {}, "jitter is added to retry"),
    ("retry=100&jitter=-1", {}, "jitter must be an integer from 0 to 600000"),
    ("ids=1&count=3", {"Last-Event-ID": "4"}, "lastEventId must be an integer from 0 to 3"),
    ("ids=1", {"Last-Event-ID": "abc"}, "lastEventId must be an integer from 0 to 10"),
])
@pytest.mark.parametrize("path", ["/stream", "/gzip/stream"])
def test_bad_input(client, path, query, headers, message):
    response = client.get(f"{path}?{query}", headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_stats_counts_producers(client):
    response = client.get("/stats")
    assert response.status_code == 200 and response.get_json() == {"producers": 0}


# --- live, through real gunicorn ------------------------------------------------

@pytest.mark.live
def test_live_gzip_lump_versus_flush(live_server):
    base = live_server.url + "/pitfalls/{}?count=4&interval=0.2"
    zipped = live_events(base.format("gzip/stream"))  # requests asks for gzip and unzips
    flushed = live_events(base.format("gzip-flush/stream"))
    plain = live_events(base.format("stream"))
    assert zipped.headers["Content-Encoding"] == flushed.headers["Content-Encoding"] == "gzip"
    assert numbers(zipped) == numbers(flushed) == numbers(plain) == [1, 2, 3, 4]
    assert in_a_lump(zipped, 0.2)
    assert one_by_one(flushed, 0.2) and one_by_one(plain, 0.2)


def producers(server):
    return requests.get(server.url + "/pitfalls/stats", timeout=5).json()["producers"]


@pytest.mark.live
def test_live_departed_client_is_noticed_by_the_next_write(live_server):
    """The client leaves after the first event. With a heartbeat of 0.1 s the
    producer ends long before the next event is due; without one it runs on,
    its client gone, until a write fails."""
    url = live_server.url + "/pitfalls/stream?count=1000&interval=0.8"
    assert wait_until(lambda: producers(live_server) == 0, timeout=5)
    live_events(url + "&heartbeat=0.1", limit=1)
    assert wait_until(lambda: producers(live_server) == 0, timeout=0.6)

    live_events(url, limit=1)
    time.sleep(0.4)  # half an interval: nothing written since the client left
    assert producers(live_server) == 1  # still running, nobody listening
    assert wait_until(lambda: producers(live_server) == 0, timeout=3)  # a later write failed


@pytest.mark.live
def test_sync_worker_queues_streams_and_its_timeout_cuts_them(tmp_path):
    """bench/workers.py at small scale: under the sync worker the second stream's
    first event waits for the first stream to end, and a stream longer than
    --timeout is cut (WORKER TIMEOUT); under gevent neither happens."""
    out = tmp_path / "workers.json"
    command = [sys.executable, "bench/workers.py", "sync", "gevent", "--timeout", "1",
               "--stream", "0.5", "--long", "2.5", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WORKER TIMEOUT" in result.stdout
    sync, gevent = json.loads(out.read_text())
    assert sync["first"]["end"] and sync["second"]["end"]
    assert sync["second"]["first_event"] > 0.3  # queued behind the first stream (0.5 s)
    assert gevent["second"]["first_event"] < 0.3
    assert sync["worker_timeout"] and not sync["long"]["end"]
    assert sync["long"]["events"] < sync["long"]["sent"]
    assert not gevent["worker_timeout"] and gevent["long"]["end"]
    assert gevent["long"]["events"] == gevent["long"]["sent"]


# --- live, through a real nginx ---------------------------------------------------

def kit_config(upstream, listen, **directives):
    """deploy/nginx.conf with the two ports (and any directive given) changed."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    changes = {r"server 127\.0\.0\.1:8000;": f"server 127.0.0.1:{upstream};",
               r"listen 127\.0\.0\.1:8080;": f"listen 127.0.0.1:{listen};"}
    changes.update({rf"\b{name} [^;]+;": f"{name} {value};" for name, value in directives.items()})
    for pattern, replacement in changes.items():
        text, found = re.subn(pattern, replacement, text)
        assert found == 1, f"deploy/nginx.conf should have exactly one {pattern!r}"
    return text


def default_config(upstream, listen):
    """nginx with nothing but a proxy_pass: its defaults buffer, speak HTTP/1.0
    to the upstream and time out after 60 s."""
    return f"""pid nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    server {{
        listen 127.0.0.1:{listen};
        location / {{ proxy_pass http://127.0.0.1:{upstream}; }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path):
    """start(config_for) runs nginx in the foreground on a free loopback port with
    the config config_for(port) returns, its pid and temp files in a folder of its
    own; returns its URL. Every nginx started is stopped by its pid afterwards."""
    if not Path(NGINX).exists():
        reason = f"nginx not found at {NGINX} (Debian: apt-get install nginx-light)"
        if os.environ.get("KIT_REQUIRE_NGINX") == "1":
            pytest.fail(f"KIT_REQUIRE_NGINX=1 but {reason}")
        pytest.skip(reason)
    processes = []

    def start(config_for, scheme="http"):
        port = free_port()
        prefix = tmp_path / f"nginx-{port}"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(config_for(port))
        log = prefix / "nginx.log"
        with open(log, "wb") as output:
            processes.append(subprocess.Popen(
                [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                stdout=output, stderr=subprocess.STDOUT))
        url = f"{scheme}://127.0.0.1:{port}"
        if not wait_until(lambda: processes[-1].poll() is not None or _answers(url), timeout=10) \
                or processes[-1].poll() is not None:
            pytest.fail(f"nginx did not start:\n{log.read_text()}")
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def _answers(url):
    try:
        with warnings.catch_warnings():  # https: the tests' own self-signed certificate
            warnings.simplefilter("ignore")
            return requests.get(url + "/healthz", timeout=1, verify=False).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.mark.live
def test_nginx_kit_config_streams_event_by_event(live_server, nginx):
    url = nginx(lambda port: kit_config(live_server.port, port))
    for query in ("", "&bare=1"):  # with the header, and without it
        stream = live_events(url + "/pitfalls/stream?count=4&interval=0.2" + query)
        assert stream.status == 200 and numbers(stream) == [1, 2, 3, 4]
        assert one_by_one(stream, 0.2), gaps(stream)


@pytest.mark.live
def test_nginx_defaults_buffer_a_stream_that_omits_the_header(live_server, nginx):
    """nginx's defaults (buffering on, HTTP/1.0 to gunicorn) hold a stream without
    "X-Accel-Buffering: no" until it ends; with the header it streams."""
    url = nginx(lambda port: default_config(live_server.port, port))
    bare = live_events(url + "/pitfalls/stream?count=4&interval=0.2&bare=1")
    assert bare.status == 200 and numbers(bare) == [1, 2, 3, 4]
    assert in_a_lump(bare, 0.2), gaps(bare)  # held in nginx's buffers until the end
    kit = live_events(url + "/pitfalls/stream?count=4&interval=0.2")
    assert one_by_one(kit, 0.2), gaps(kit)  # "X-Accel-Buffering: no" turns buffering off


@pytest.mark.live
def test_nginx_kit_config_gzips_pages_but_never_event_streams(live_server, nginx):
    url = nginx(lambda port: kit_config(live_server.port, port))
    css = requests.get(url + "/pitfalls/static/style.css", headers={"Accept-Encoding": "gzip"})
    assert css.status_code == 200 and css.headers.get("Content-Encoding") == "gzip"
    stream = live_events(url + "/pitfalls/stream?count=3&interval=0.2",
                         headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in stream.headers and one_by_one(stream, 0.2)


@pytest.mark.live
def test_nginx_idle_timeout_cuts_a_late_first_event_and_heartbeats_keep_it(live_server, nginx):
    """A proxy_read_timeout of 0.5 s stands in for a CDN's idle timeout. A stream
    silent for 1 s before its first event never gets its headers out: nginx
    answers 504. The same stream with a 0.2 s heartbeat gets through whole."""
    url = nginx(lambda port: kit_config(live_server.port, port, proxy_read_timeout="500ms"))
    late = live_events(url + "/pitfalls/stream?count=2&interval=0.05&delay=1")
    assert late.status == 504 and late.events == []
    kept = live_events(url + "/pitfalls/stream?count=2&interval=0.05&delay=1&heartbeat=0.2")
    assert kept.status == 200 and numbers(kept) == [1, 2] and kept.raw.count(": ping") >= 4


def with_websocket(text):
    """deploy/nginx.conf with its commented WebSocket location switched on."""
    block = re.search(r"^( +)# location /compare/ws \{\n(?:\1#.*\n)*?\1# \}\n", text, re.M)
    assert block, "deploy/nginx.conf should have a commented location /compare/ws"
    return text.replace(block.group(0), re.sub(r"^( +)# ?", r"\1", block.group(0), flags=re.M))


@pytest.mark.live
def test_nginx_passes_a_websocket_only_with_its_upgrade_lines(live_server, nginx):
    # As it is, the config passes no Upgrade header: the kit sees a plain GET.
    plain = Client(nginx(lambda port: kit_config(live_server.port, port)), "/compare/ws")
    plain.close()
    assert plain.accepted.status_code == 426
    url = nginx(lambda port: with_websocket(kit_config(live_server.port, port)))
    client = Client(url, "/compare/ws?since=0")
    try:
        assert client.messages(1)[0]["id"]
        client.send('{"ping": 7}')  # answered after the kept messages still on their way
        assert any(client.messages(1)[0] == {"pong": 7} for _ in range(1001))
    finally:
        client.close()


# --- HTTP/2 through nginx, in real Chromium ---------------------------------------

@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made now with openssl: (cert, key)."""
    cert, key = tmp_path / "kit.pem", tmp_path / "kit.key"
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return cert, key


def http2_config(upstream, listen, certificate, http2=True):
    """deploy/nginx-http2.conf with its ports and certificate changed (without `http2`:
    the same TLS, HTTP/1.1)."""
    text = (ROOT / "deploy" / "nginx-http2.conf").read_text()
    changes = {r"server 127\.0\.0\.1:8000;": f"server 127.0.0.1:{upstream};",
               r"listen 127\.0\.0\.1:8443 ssl http2;": f"listen 127.0.0.1:{listen} ssl{' http2' * http2};",
               r"ssl_certificate +/tmp/kit-nginx/kit\.pem;": f"ssl_certificate {certificate[0]};",
               r"ssl_certificate_key +/tmp/kit-nginx/kit\.key;": f"ssl_certificate_key {certificate[1]};"}
    for pattern, replacement in changes.items():
        text, found = re.subn(pattern, replacement, text)
        assert found == 1, f"deploy/nginx-http2.conf should have exactly one {pattern!r}"
    return text


@pytest.fixture
def tls_page(browser):
    context = browser.new_context(ignore_https_errors=True)  # the certificate is our own
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


OPEN_TEN = """async () => {
    const sources = Array.from({ length: 10 }, () => new EventSource("stream?count=1000&interval=0.1&heartbeat=1"));
    const events = sources.map(() => 0);
    sources.forEach((source, i) => { source.onmessage = () => { events[i] += 1; }; });
    const started = performance.now();
    while (events.some((n) => n < 3) && performance.now() - started < 8000) await new Promise((r) => setTimeout(r, 50));
    sources.forEach((source) => source.close());
    return events;
}"""


@pytest.mark.browser
@pytest.mark.parametrize("http2", [False, True], ids=["http1-seventh-waits", "http2-ten-stream"])
def test_http2_lifts_the_six_connection_limit(live_server, nginx, certificate, tls_page, http2):
    url = nginx(lambda port: http2_config(live_server.port, port, certificate, http2), scheme="https")
    tls_page.goto(url + "/pitfalls/")
    protocol = tls_page.evaluate('performance.getEntriesByType("navigation")[0].nextHopProtocol')
    assert protocol == ("h2" if http2 else "http/1.1")
    if not http2:  # one EventSource of seven waits for one of the six connections
        tls_page.click("#open-seven")
        tls_page.wait_for_function("document.querySelectorAll('#seven li.open').length === 6")
        tls_page.wait_for_timeout(1000)
        # (Over TLS the connections' handshakes finish in any order: not always the seventh.)
        states = tls_page.locator("#seven li").all_text_contents()
        assert sum("connecting" in state for state in states) == 1, states
        assert tls_page.locator("#seven li.open").count() == 6
        tls_page.click("#close-seven")
        return
    events = tls_page.evaluate(OPEN_TEN)  # one connection, ten streams on it
    assert min(events) >= 3, events


# --- in real Chromium ---------------------------------------------------------------

def start_on_page(page, server, **fields):
    """Open the page, reset the form, fill it in and press Start."""
    page.goto(server.url + "/pitfalls/")
    page.evaluate("document.getElementById('controls').reset()")
    for name, value in fields.items():
        if value is True:
            page.check(f"input[name={name}]")
        elif name == "via":
            page.select_option("select[name=via]", value)
        else:
            page.fill(f"input[name={name}]", str(value))
    page.click("button[type=submit]")


def counter(page, name):
    return int(page.locator(f"#{name}").text_content())


@pytest.mark.browser
def test_page_a_finite_stream_without_an_end_reconnects_for_ever(live_server, page):
    start_on_page(page, live_server, count=2, interval=0.05, retry=100)
    page.wait_for_function("Number(document.getElementById('reconnects').textContent) >= 3")
    page.click("#stop")
    assert page.locator("#events li.gap").count() >= 2  # replays: each reconnect started over


@pytest.mark.browser
def test_page_end_event_and_close_stop_the_storm(live_server, page):
    start_on_page(page, live_server, count=2, interval=0.05, retry=100, end=True)
    page.wait_for_function("document.getElementById('status').value.startsWith('done')")
    page.wait_for_timeout(500)  # five retry delays: a storm would have reconnected by now
    assert counter(page, "opens") == 1 and counter(page, "received") == 2


@pytest.mark.browser
def test_page_204_stops_eventsource_for_good(live_server, page):
    start_on_page(page, live_server, count=2, interval=0.05, retry=100, ids=True)
    page.wait_for_function("document.getElementById('status').value.startsWith('closed for good')")
    assert counter(page, "opens") == 1 and counter(page, "received") == 2


@pytest.mark.browser
@pytest.mark.parametrize("via, lumped", [("gzip", True), ("gzipFlush", False)])
def test_page_shows_gzip_holding_events_back(live_server, page, via, lumped):
    start_on_page(page, live_server, count=4, interval=0.2, end=True, via=via)
    page.wait_for_function("document.getElementById('status').value.startsWith('done')")
    texts = page.locator("#events li").all_text_contents()
    after_previous = [float(re.search(r"\(([\d.]+) s after", text).group(1)) for text in texts[1:]]
    assert len(texts) == 4
    assert (max(after_previous) < 0.1) if lumped else (min(after_previous) > 0.1), texts


@pytest.mark.browser
def test_page_seventh_stream_to_one_host_waits_for_a_free_connection(live_server, page):
    page.goto(live_server.url + "/pitfalls/")
    page.click("#open-seven")
    page.wait_for_function("document.querySelectorAll('#seven li.open').length === 6")
    page.wait_for_timeout(1000)  # the six are open and streaming; the seventh still waits
    seventh = page.locator("#seven li").nth(6)
    assert page.locator("#seven li.open").count() == 6 and "connecting" in seventh.text_content()
    page.click("#close-one")
    page.wait_for_function("document.querySelector('#seven li:nth-child(7)').className === 'open'")
    page.click("#close-seven")


@pytest.mark.browser
def test_the_laptop_lid_is_held_then_let_go_at_send_timeout(start_server, page):
    # Chapter 7: clients that never read are held by the server until SEND_TIMEOUT.
    server = start_server(env={"SEND_TIMEOUT": "1"})
    page.goto(server.url + "/pitfalls/")
    producers = "Number(document.getElementById('producers').textContent)"
    page.wait_for_function(f"{producers} === 0")
    page.click("#lids")
    page.wait_for_function(f"{producers} === 5")  # held: nobody reads them
    assert "let go after ~1 s" in page.locator("#lids-status").text_content()
    page.wait_for_function(f"{producers} === 0", timeout=10_000)  # cut at SEND_TIMEOUT


def test_laptop_lids_need_a_server_with_a_socket(client):
    response = client.post("/lids?count=5")
    assert response.status_code == 400 and "TCP server" in response.get_json()["error"]
    assert client.post("/lids?count=51").status_code == 400


@pytest.mark.live
def test_laptop_lids_are_capped(start_server):
    # Each lid is a socket the server opens to itself: a client must not be able to
    # make it open thousands of them.
    server = start_server()
    answers = [requests.post(f"{server.url}/pitfalls/lids?count=25", timeout=5) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [202, 202, 429]
    assert "at most 50 lids" in answers[2].json()["error"]
