"""tutorial.md's code is the demos' real code, and every demo has its chapter."""
import subprocess
import sys

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
