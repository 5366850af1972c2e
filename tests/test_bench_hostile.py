"""bench/hostile.py runs, and the kit's deadlines let go of its hostile clients.

Behaviour only, no timings: a few silent streams and trickled bodies against a
server with one-second deadlines are all released by the last row.
"""
import subprocess
import sys

from tests.conftest import ROOT

COLUMNS = ["s", "gunicorn", "nginx", "TCP", "orphans", "silent", "trickle", "slowloris"]  # of a row


def test_hostile_clients_are_released():
    result = subprocess.run(
        # /compare/sse at 100 Hz, so that silent client's buffer fills within the run too
        [sys.executable, "bench/hostile.py", "--silent", "4", "--trickle", "2", "--slowloris", "0",
         "--readers", "2", "--duration", "10", "--every", "1", "--send-timeout", "1",
         "--body-timeout", "1", "--compare-rate", "100", "--no-nginx"],
        cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = [line.split() for line in result.stdout.splitlines()
            if line.strip() and line.split()[0].replace(".", "").isdigit()]
    assert rows, result.stdout
    last = dict(zip(COLUMNS, rows[-1]))
    assert last["silent"] == "0", result.stdout
    assert last["trickle"] == "0", result.stdout
    assert "2/2 released" in result.stdout and "408" in result.stdout, result.stdout
