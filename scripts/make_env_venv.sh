#!/usr/bin/env bash
# Build a virtualenv that can serve pushcut's tabletop env WITHOUT torch: numpy, msgpack,
# mujoco (+ its own deps), pluggy and pyyaml, and pushcut itself installed with --no-deps.
# It is what a simulator's own venv looks like (docs/remote-envs.md), and what
# tests/core/test_transport_venv.py serves from and trains against.
#
#   scripts/make_env_venv.sh DIR
#   PUSHCUT_ENV_VENV_PYTHON=DIR/bin/python pytest tests/core/test_transport_venv.py
#
# The numpy / mujoco pins are the main venv's, so a run served from here steps the same
# physics as one stepped in-process. Idempotent: a DIR that already works is left alone.
# Set PYTHON to choose the interpreter (default: python3.11, else python3).
set -euo pipefail

VENV="${1:?usage: $0 VENV_DIR}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PINS=(numpy==2.4.6 msgpack==1.2.4 mujoco==3.9.0 pluggy==1.7.0 PyYAML==6.0.4 packaging==26.4)

venv_works() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$REPO" <<'PY' >/dev/null 2>&1
import importlib.util, sys
from pathlib import Path
assert importlib.util.find_spec("torch") is None, "torch must not be installed here"
import mujoco, msgpack, numpy  # noqa: F401
import pushcut.envpool.server  # noqa: F401
import pushcut.plugins.envs.tabletop  # noqa: F401
assert Path(pushcut.__file__).resolve().parent == Path(sys.argv[1]) / "core", pushcut.__file__
assert mujoco.__version__ == "3.9.0" and numpy.__version__ == "2.4.6"
PY
}

if venv_works; then
    echo "env venv already works: $VENV"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
echo "creating the torch-free env venv in $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
"$VENV/bin/python" -m pip install -q --no-deps -e "$REPO"
if ! venv_works; then
    echo "the env venv in $VENV does not import pushcut's env server without torch" >&2
    exit 1
fi
echo "env venv ready: $VENV (python: $VENV/bin/python)"
