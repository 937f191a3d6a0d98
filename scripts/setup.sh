#!/usr/bin/env bash
# Everything pushcut needs on a fresh Debian machine: apt packages for headless
# MuJoCo rendering and video encoding, a virtualenv in .venv with CPU torch
# first and everything else constrained to it. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# chromium: the headless browser the human-judge page is tested in (tests/plugins/rewards/).
for pkg in libegl1 libgl1 libosmesa6 ffmpeg chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, from the pinned CPU wheel; constraints keep it for everything after.
python -m pip install -q "torch==2.13.0"
# mujoco 4 wheels split into mujoco + mujoco-core + mujoco-studio sharing one folder; the [libero]
# extra pins mujoco 3.9.0 (robosuite 1.4 breaks on 3.10+), so clear a 4.x install first rather
# than let 3.9.0 land on top of 4.x files.
if python -m pip show mujoco-core >/dev/null 2>&1; then
    python -m pip uninstall -y -q mujoco mujoco-core mujoco-studio
fi
# [libero]: the LIBERO env plugin (libero 0.1.1, robosuite 1.4.0, bddl 1.0.1, mujoco 3.9.0).
python -m pip install -q -c constraints.txt -e ".[test,libero]"
# [ray]: the ray env transport and learner ranks (tests/core/test_distributed.py).
python -m pip install -q -c constraints.txt -e ".[ray]"
# playwright drives Debian's chromium in the human-judge browser tests (its own browser download is not used).
python -m pip install -q -c constraints.txt playwright
# Remove the torchvision that libero's robomimic requirement drags in (a CUDA build that crashes
# next to CPU torch; nothing pushcut runs imports it).
if python -m pip show torchvision >/dev/null 2>&1; then python -m pip uninstall -y -q torchvision; fi
echo "pushcut set up in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
