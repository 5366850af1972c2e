"""CI: the README's serve command, on a fresh virtualenv with requirements.txt alone.

Usage: python .ci/serve_check.py VENV 'python -m pip install -r requirements.txt && gunicorn -c gunicorn.conf.py'
Runs the command in the virtualenv VENV on a free loopback port (BIND), waits for the
start-up line, checks /healthz and that one stream delivers its events, then stops
the server by the process group it started. Standard library only: it runs before
anything is installed.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(venv, command):
    port = free_port()
    env = {**os.environ, "BIND": f"127.0.0.1:{port}", "VIRTUAL_ENV": venv,
           "PATH": os.path.join(venv, "bin") + os.pathsep + os.environ["PATH"]}
    server = subprocess.Popen(["bash", "-c", command], env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, url = [], None
    try:
        deadline = time.monotonic() + 300  # the pip install comes first
        for line in server.stdout:
            output.append(line)
            if line.startswith("Serving the demos at "):
                url = line.split()[4]
                break
            if time.monotonic() > deadline:
                break
        if url != f"http://127.0.0.1:{port}/":
            raise SystemExit(f"serve check: no start-up line naming http://127.0.0.1:{port}/:\n{''.join(output)}")
        with urllib.request.urlopen(url + "healthz", timeout=10) as answer:
            assert answer.read() == b"ok", "healthz did not answer ok"
        with urllib.request.urlopen(url + "basic/stream?count=3&interval=0.1", timeout=10) as answer:
            assert answer.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            events = [line for line in answer.read().decode().splitlines() if line.startswith("data: ")]
            assert len(events) == 3, f"expected 3 events, got {events}"
        print(f"serve check: {command!r} served {url} from requirements.txt alone: healthz ok, 3 events")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the shell and the server it started, nothing else
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


if __name__ == "__main__":
    main(*sys.argv[1:])
