#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine: set-up (apt + .venv), the
# verl reference environment for the algorithm cross-checks, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f tests/reference/make_verl_env.sh ]; then
    bash tests/reference/make_verl_env.sh .venv-verl
    export PUSHCUT_VERL_PYTHON="$PWD/.venv-verl/bin/python"
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec .venv/bin/python -m pytest -q "$@"
