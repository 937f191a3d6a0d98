#!/usr/bin/env bash
# Build the Meta-World virtualenv (default .venv-metaworld) in one command. Meta-World 3.1 pins
# mujoco==3.3.0 while pushcut's [libero] extra pins 3.9.0, so Meta-World runs in its own venv and
# the trainer reaches it through the env transport (rollout.transport.python=.venv-metaworld/bin/python, or
# `pushcut env serve` from this venv): see docs/metaworld.md.
#
#   scripts/setup-metaworld.sh [VENV_DIR]
#   PUSHCUT_METAWORLD_PYTHON=.venv-metaworld/bin/python pytest tests/plugins/envs/metaworld
#
# What it installs: metaworld 3.1.1 with its own pins (mujoco 3.3.0, gymnasium), pushcut itself
# with --no-deps plus what its env worker imports (numpy, msgpack, pluggy, PyYAML, packaging), and
# pytest to run pushcut.testing's Env contract here. No torch: nothing in an env worker needs it.
# Rendering needs libegl1 (or libosmesa6), which scripts/setup.sh installs.
#
# Idempotent: a venv that already imports everything is left alone.
# Set PYTHON to choose the interpreter (default: python3.11, else python3).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$REPO/.venv-metaworld}"
PINS=(metaworld==3.1.1 mujoco==3.3.0 msgpack pluggy PyYAML packaging pillow pytest)

venv_works() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$REPO" <<'PY' >/dev/null 2>&1
import sys
from pathlib import Path
import metaworld, mujoco, msgpack, pytest  # noqa: F401
import pushcut.envpool.server  # noqa: F401
import pushcut.plugins.envs.metaworld.env  # noqa: F401
from importlib.metadata import entry_points, version
assert "metaworld" in {ep.name for ep in entry_points(group="pushcut")}, "stale pushcut metadata"
assert Path(pushcut.__file__).resolve().parent == Path(sys.argv[1]) / "core", pushcut.__file__
assert version("metaworld") == "3.1.1" and mujoco.__version__ == "3.3.0", (version("metaworld"), mujoco.__version__)
PY
}

if venv_works; then
    echo "Meta-World venv already works: $VENV"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
start=$(date +%s)
echo "creating the Meta-World venv in $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "${PINS[@]}"
"${PIP[@]}" --no-deps -e "$REPO"
if ! venv_works; then
    echo "setup-metaworld: the venv in $VENV does not import Meta-World and pushcut's env worker; see the traceback of: $VENV/bin/python -c 'import metaworld, pushcut.plugins.envs.metaworld.env'" >&2
    exit 1
fi
echo "Meta-World venv ready: $VENV (python: $VENV/bin/python) in $(( $(date +%s) - start )) s"
