#!/bin/sh
# Install the peers of bench/fanout.py, beside the kit and never into it: the Python
# ones into bench/peers/.venv, Express into bench/peers/express/node_modules (if npm
# is here). Both are ignored by git. Run from anywhere: sh bench/peers/install.sh
set -e
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q -r requirements.txt
if command -v npm >/dev/null; then
  (cd express && npm install --no-audit --no-fund --silent)
else
  echo "npm not found: the Express peer is skipped"
fi
echo "peers installed: $(.venv/bin/python -m pip list 2>/dev/null | grep -iE '^(fastapi|uvicorn|sse-starlette) ' | tr -s ' ' | paste -sd, -)"
