"""What every test file shares: reading SSE, a live gunicorn server, a headless browser.

Live servers and the browser are real: `gunicorn -k gevent` on a free loopback
port, Debian's Chromium driven by Playwright. Without Chromium the browser tests
skip, unless KIT_REQUIRE_BROWSER=1 (CI) turns the skip into a failure. The same
goes for Redis tests: a real `redis-server` on a free port, KIT_REQUIRE_REDIS=1.
"""
import codecs
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from streamkit import sse

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [  # no sandbox as root; no background traffic to a network we don't have
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


# --- reading streams -------------------------------------------------------------

@dataclass
class Stream:
    """What a client saw: status, headers, the parsed events, the raw text, and
    when each event arrived (time.monotonic())."""
    status: int
    headers: dict
    events: list = field(default_factory=list)
    raw: str = ""
    arrivals: list = field(default_factory=list)

    def of_type(self, name):
        return [event for event in self.events if event.event == name]


def read_events(client, url, limit=None, **kwargs):
    """GET `url` with a Flask test client and parse up to `limit` events, then close.

    The test client does not buffer, so an endless stream is fine: we stop
    reading after `limit` events and close the response, ending the generator.
    """
    response = client.get(url, **kwargs)
    stream = Stream(response.status_code, dict(response.headers))
    return _collect(stream, response.response, limit, response.close)


def live_events(url, limit=None, headers=None, timeout=10):
    """The same over real HTTP with requests, reading bytes as they arrive."""
    response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    stream = Stream(response.status_code, dict(response.headers))
    return _collect(stream, response.iter_content(chunk_size=None), limit, response.close)


def _collect(stream, chunks, limit, close):
    parser, text = sse.EventParser(), codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            stream.raw += text.decode(chunk)
            for event in parser.feed(chunk):
                stream.events.append(event)
                stream.arrivals.append(time.monotonic())
            if limit is not None and len(stream.events) >= limit:
                break
    finally:
        close()
    return stream


def wait_until(condition, timeout, step=0.02):
    """Poll `condition` until it is true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(step)
    return value


# --- a live gunicorn server -----------------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """`gunicorn -c gunicorn.conf.py` on a free loopback port, as a user runs it."""

    def __init__(self, tmp_path, workers=1, env=None, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers, self.env = workers, {**os.environ, **(env or {})}
        self.log_path = tmp_path / f"gunicorn-{self.port}.log"
        self.process = None

    def start(self):
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                   "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self._healthy, timeout=20, step=0.1):
            self.stop()
            raise RuntimeError(f"gunicorn did not come up:\n{self.log_path.read_text()}")
        return self

    def _healthy(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{self.log_path.read_text()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).text == "ok"
        except (requests.ConnectionError, requests.Timeout):  # a busy machine: not up yet
            return False

    def stop(self, sig=signal.SIGTERM):
        """Stop the server we started, by its pid; SIGQUIT drops open streams at once."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def worker_pids(self):
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """One gevent worker serving the hub, shared by the live tests of every demo."""
    server = LiveServer(tmp_path_factory.mktemp("live")).start()
    yield server
    server.stop()


@pytest.fixture
def start_server(tmp_path):
    """Start servers of your own (other env, workers, restarts); all stopped after."""
    servers = []

    def start(**kwargs):
        servers.append(LiveServer(tmp_path, **kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop(signal.SIGQUIT)


@pytest.fixture
def run_alone(tmp_path):
    """Run the kit by another command, as a user would (`flask --app demos.counter
    run`, `python -m demos serve basic`): run_alone(*args, ready=path, env=None)
    starts `python -m <args> --port <a free port>`, waits until GET `ready` answers
    200 and returns the base URL. Every process is stopped (by pid) after the test."""
    processes = []

    def run(*args, ready="/", env=None):
        port = free_port()
        log_path = tmp_path / f"alone-{port}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", *args, "--port", str(port)],
                                       cwd=ROOT, env={**os.environ, **(env or {})},
                                       stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def answers():
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(args)} exited:\n{log_path.read_text()}")
            try:
                return requests.get(url + ready, timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False

        if not wait_until(answers, timeout=15, step=0.1):
            raise RuntimeError(f"{' '.join(args)} did not come up:\n{log_path.read_text()}")
        return url

    yield run
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


# --- a headless browser ------------------------------------------------------------

def _unavailable(reason):
    if os.environ.get("KIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KIT_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (or KIT_CHROMIUM, or Playwright's own if installed)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -r requirements-dev.txt)")
    executable = os.environ.get("KIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    options = {"headless": True, "args": CHROMIUM_FLAGS}
    if Path(executable).exists():
        options["executable_path"] = executable
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(**options)
        except Error as error:
            _unavailable(f"no Chromium to drive ({executable}): {error.message.splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


# --- a real redis-server ---------------------------------------------------------------

class RedisServer:
    """`redis-server` on a free loopback port, no persistence; stop() and start()
    again keep the port, as a restarted Redis would (with its data gone)."""

    def __init__(self, tmp_path, executable):
        self.port, self.executable = free_port(), executable
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = tmp_path / f"redis-{self.port}.log"
        self.process = None

    def start(self):
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--daemonize", "no"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self._answers, timeout=10, step=0.05):
            self.stop()
            raise RuntimeError(f"redis-server did not come up:\n{self.log_path.read_text()}")
        return self

    def _answers(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        """Stop the redis-server we started, by its pid."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_executable():
    """The redis-server to run (or KIT_REDIS_SERVER); skips the test without one,
    unless KIT_REQUIRE_REDIS=1 (CI) turns the skip into a failure."""
    executable = os.environ.get("KIT_REDIS_SERVER") or shutil.which("redis-server")
    if not executable:
        reason = "redis-server is not installed (Debian: apt install redis-server)"
        if os.environ.get("KIT_REQUIRE_REDIS") == "1":
            pytest.fail(f"KIT_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    return executable


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for one test, stopped (by pid) after it."""
    server = RedisServer(tmp_path, redis_executable()).start()
    yield server
    server.stop()
