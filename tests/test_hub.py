"""The hub: every demo mounted and listed, /healthz, and `python -m demos`."""
import subprocess
import sys

import pytest
import requests

from demos import hub
from tests.conftest import ROOT, live_events

SHARED = {"__init__", "__main__", "hub"}  # the package itself, its command line and the index: not lessons


@pytest.fixture
def client():
    return hub.create_app({"TESTING": True}).test_client()


def test_every_demo_module_is_mounted_and_answers(client):
    modules = {path.stem for path in (ROOT / "demos").glob("*.py")} - SHARED
    assert modules == {module.__name__.rsplit(".", 1)[1] for module in hub.DEMOS.values()}
    for prefix in hub.DEMOS:
        response = client.get(f"/{prefix}/")
        assert response.status_code == 200, prefix
        assert b"Raw wire" in response.data, prefix


def test_every_demo_reads_in_one_sitting():
    # A workshop reads each lesson top to bottom: the machinery lives in streamkit/.
    for module in hub.DEMOS.values():
        lines = (ROOT / "demos" / f"{module.__name__.rsplit('.', 1)[1]}.py").read_text().count("\n")
        assert lines <= 150, (module.__name__, lines)


def test_index_lists_the_demos_in_order(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    positions = [page.index(f'href="{prefix}/"') for prefix in hub.DEMOS]
    assert positions == sorted(positions)
    assert "Servlet-like writer" in page


def test_healthz(client):
    response = client.get("/healthz")
    assert (response.status_code, response.data) == (200, b"ok")


def test_list_names_the_demos():
    result = subprocess.run([sys.executable, "-m", "demos", "list"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(hub.DEMOS)


@pytest.mark.live
@pytest.mark.parametrize("demo, path", [(None, "/basic/stream"), ("basic", "/stream")],
                         ids=["hub", "one-demo"])
def test_serve_streams_on_gevents_own_server(run_alone, demo, path):
    # `python -m demos serve`: the Windows-friendly way, streaming just the same.
    url = run_alone("demos", "serve", *([demo] if demo else []), ready=path + "?count=1")
    stream = live_events(url + path + "?count=3&interval=0.25")
    gaps = [b - a for a, b in zip(stream.arrivals, stream.arrivals[1:])]
    assert len(stream.events) == 3 and min(gaps) > 0.15


@pytest.mark.live
def test_one_demo_runs_alone_under_flask_run(run_alone):
    # `flask --app demos.counter run`: the threaded development server streams too.
    url = run_alone("flask", "--app", "demos.counter", "run", ready="/stream?count=1")
    stream = live_events(url + "/stream?count=3&interval=0.25")
    assert [event.id for event in stream.events] == ["1", "2", "3", "3"]
    assert min(b - a for a, b in zip(stream.arrivals[:3], stream.arrivals[1:3])) > 0.15


@pytest.mark.live
def test_gunicorn_serves_index_and_static(live_server):
    assert requests.get(live_server.url + "/healthz").text == "ok"
    index = requests.get(live_server.url + "/")
    assert index.status_code == 200 and 'href="counter/"' in index.text
    css = requests.get(live_server.url + "/counter/static/style.css")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")


@pytest.mark.browser
def test_index_page_links_every_demo(live_server, page):
    page.goto(live_server.url + "/")
    links = page.locator("ol.demos a")
    assert links.count() == len(hub.DEMOS)
    links.first.click()
    page.wait_for_url(f"{live_server.url}/{next(iter(hub.DEMOS))}/")
    assert page.locator("h1").text_content().startswith("1 ")
