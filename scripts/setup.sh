#!/usr/bin/env bash
# Create the project's virtual environment in .venv (idempotent: a complete .venv is reused).
# torch 2.13.0 (CPU wheel) goes in first so that nothing pulls a CUDA build; the rest is pinned by
# requirements.txt and constrained by constraints.txt (the freeze of a checked install, docs/stack.md §1.1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.maskdcpt-installed
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
echo "[setup] creating .venv with $($PY --version)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U "pip==26.*" >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q torch==2.13.0
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
# sporco ships the classic benchmark photos (kodim23, monarch, ...); its own import is trivial, so its heavy
# optional dependencies are skipped.
.venv/bin/python -m pip install -q --no-deps sporco==0.2.2.post1
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "[setup] done"
