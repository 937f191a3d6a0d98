#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine: set-up (apt + .venv), the
# verl and timm reference environments for the cross-checks, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f tests/reference/make_verl_env.sh ]; then
    bash tests/reference/make_verl_env.sh .venv-verl
    export PUSHCUT_VERL_PYTHON="$PWD/.venv-verl/bin/python"
fi
# timm, the library OpenVLA builds its vision towers with, for the OpenVLA tower cross-check.
bash tests/reference/make_timm_env.sh .venv-timm
export PUSHCUT_TIMM_PYTHON="$PWD/.venv-timm/bin/python"
# transformers 4.37 / peft 0.4 / diffusers 0.11 (TinyVLA's pins), for the TinyVLA original-variant cross-check (docs/tinyvla.md).
bash tests/reference/make_tinyvla_env.sh .venv-tinyvla-ref
export PUSHCUT_TINYVLA_REF_PYTHON="$PWD/.venv-tinyvla-ref/bin/python"
# A torch-free venv that serves the tabletop env, for the env-transport tests (docs/remote-envs.md).
bash scripts/make_env_venv.sh .venv-env
export PUSHCUT_ENV_VENV_PYTHON="$PWD/.venv-env/bin/python"
# RoboTwin 2.0 in its own venv (+ Mesa's lavapipe Vulkan driver), for tests/plugins/envs/robotwin (docs/robotwin.md).
bash scripts/setup-robotwin.sh .venv-robotwin
export PUSHCUT_ROBOTWIN_PYTHON="$PWD/.venv-robotwin/bin/python"
# Meta-World 3.1 in its own venv (it pins mujoco 3.3.0; no torch), for tests/plugins/envs/metaworld (docs/metaworld.md).
bash scripts/setup-metaworld.sh .venv-metaworld
export PUSHCUT_METAWORLD_PYTHON="$PWD/.venv-metaworld/bin/python"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec .venv/bin/python -m pytest -q "$@"
