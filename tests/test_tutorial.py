"""tutorial.md's code is the demos' real code, and every demo has its chapter."""
import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from demos import hub
from tests.conftest import ROOT
from tests.snippets import source


def test_excerpts_match_the_demo_files():
    # cog --check fails when a generated excerpt differs from what the file holds now.
    result = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "--diff", "-I", "tests", "tutorial.md"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        "tutorial.md is out of date; run: python -m cogapp -r -I tests tutorial.md\n"
        + result.stdout + result.stderr)


def test_every_demo_has_a_chapter_in_hub_order():
    text = (ROOT / "tutorial.md").read_text(encoding="utf-8")
    positions = [text.index(f"demos/{module.__name__.rsplit('.', 1)[1]}.py") for module in hub.DEMOS.values()]
    assert positions == sorted(positions)


def test_source_cuts_a_nested_view():
    assert source("demos/basic.py", "create_app.stream").startswith('@app.get("/stream")\ndef stream():')


# --- every curl line of the tutorial works as written ---------------------------------------

TUTORIAL_HOST = "http://127.0.0.1:8000"
ENDLESS = ("/basic/heartbeat", "/compare/sse", "/compare/sse-direct", "/broadcast/stream")  # no end without a client's Ctrl-C


def tutorial_curls():
    """The `curl` commands in tutorial.md (code lines and inline code) that ask the hub
    at 127.0.0.1:8000, with backslash continuations joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "tutorial.md").read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        found += [match.strip() for match in re.findall(r"(?:^|`)(curl [^`]+)", line)]
    return [command for command in found if TUTORIAL_HOST in command]


def quick(command):
    """Whether a command ends by itself within a few seconds: not an endless stream, not
    the stalled LLM (held on purpose), not a long count (ended by Ctrl-C in the text)."""
    url = urlsplit(next(arg for arg in shlex.split(command, comments=True) if arg.startswith(TUTORIAL_HOST)))
    query = dict(parse_qsl(url.query))
    if url.path in ENDLESS or query.get("fault") == "stall":
        return False
    if url.path.startswith("/resume/answers/"):
        return True  # an answer's stream ends with the answer
    seconds = float(query.get("delay", 0)) + int(query.get("count", 10)) * float(query.get("interval", 1))
    return not url.path.endswith("/stream") or seconds <= 8


def run_curl(command, base_url):
    if "<id>" in command:  # the answer's id, as the command before it printed
        answer = requests.post(f"{base_url}/resume/answers", json={"messages": [{"role": "user", "content": "hi"}]},
                               timeout=5)
        requests.get(base_url + answer.json()["stream"], timeout=10)  # read once: its deltas exist
        command = command.replace("<id>", answer.json()["id"])
    args = shlex.split(command.replace(TUTORIAL_HOST, base_url), comments=True)
    args = [arg for arg in args if arg != "&"]  # backgrounded in the text: here each runs alone
    args[1:1] = ["-sS", "--max-time", "10", "-o", os.devnull, "-w", "%{http_code}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=20)
    return result.returncode, result.stdout.strip(), result.stderr


@pytest.mark.live
def test_the_tutorials_curl_commands_work_as_written(live_server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    commands = [command for command in tutorial_curls() if quick(command)]
    assert len(commands) >= 10, commands  # the extraction found the tutorial's commands
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda command: run_curl(command, live_server.url), commands))
    failed = [(command, code, status, error) for command, (code, status, error) in zip(commands, results)
              if code != 0 or not status.isdigit() or not 200 <= int(status) < 400]
    assert not failed, failed


def test_the_docs_keep_their_size():
    # A workshop text, not a lab notebook: the tutorial and the README stay short.
    assert len((ROOT / "tutorial.md").read_text(encoding="utf-8").splitlines()) <= 1500
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 120
