"""bench/fanout.py runs: its C client compiles, holds every stream and reads the events.

Behaviour only, no timings: 200 streams of the direct path for two seconds.
"""
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.live
def test_fanout_bench_holds_every_stream_and_reads_its_events(tmp_path):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler for bench/fanout_client.c")
    result = subprocess.run(
        [sys.executable, "bench/fanout.py", "-n", "200", "--duration", "2", "--only", "direct",
         "--json", str(tmp_path / "fanout.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "# kit: flask" in result.stdout and "server       N    held" in result.stdout, result.stdout
    row = json.loads((tmp_path / "fanout.json").read_text())["rows"][0]
    assert row["server"] == "direct" and row["held"] == 200 and row["failed"] == 0, row
    assert row["events"] >= 200, row  # a tick at least (1 Hz, with jitter up to 1.5 s apart)
    assert row["p99_ms"] is not None and row["kib_per_stream"] is not None, row
