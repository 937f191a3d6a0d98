#!/usr/bin/env bash
# Build the RoboTwin 2.0 virtualenv (default .venv-robotwin) and the apt packages SAPIEN needs,
# in one command. RoboTwin has its own pins (numpy < 2 for mplib 0.2.1, sapien 3.0.x), so it
# runs in its own venv and the trainer reaches it through the env transport
# (rollout.transport.python=.venv-robotwin/bin/python, or `pushcut env serve` from this venv): see
# docs/robotwin.md.
#
#   scripts/setup-robotwin.sh [VENV_DIR]
#   PUSHCUT_ROBOTWIN_PYTHON=.venv-robotwin/bin/python pytest tests/plugins/envs/robotwin
#
# What it installs:
#   apt   Mesa's lavapipe Vulkan driver (mesa-vulkan-drivers >= 25, from bookworm-backports on
#         Debian 12) so SAPIEN renders on the CPU; a machine with an NVIDIA driver needs none of
#         it (SKIP_APT=1).
#   venv  RoboTwin 2.0's code as packaged on PyPI (rlinf-robotwin-runtime 0.1.3, the `robotwin`
#         package), sapien 3.0.3, mplib 0.2.1, numpy 1.26.4, CPU torch 2.13.0, and pushcut itself
#         with --no-deps plus what its env worker imports (msgpack, pluggy, PyYAML, packaging).
#
# Idempotent: a venv that already imports everything is left alone (apt is checked each time).
# Set PYTHON to choose the interpreter (default: python3.11, else python3).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$REPO/.venv-robotwin}"

# ---- apt: a Vulkan driver SAPIEN can render with ------------------------------------------------
mesa_major() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^[0-9]+://; s/\..*//'; }
if [ "${SKIP_APT:-0}" != "1" ] && command -v dpkg-query >/dev/null 2>&1; then
    major="$(mesa_major || true)"
    if [ -z "$major" ] || [ "$major" -lt 25 ] || ! dpkg -s libvulkan1 >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
        if [ "$codename" = "bookworm" ]; then
            # Debian 12 ships Mesa 22, whose lavapipe lacks what SAPIEN 3 asks of Vulkan.
            if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
                echo "adding bookworm-backports to apt (for Mesa 25's lavapipe Vulkan driver)"
                printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                    | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
            fi
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
                mesa-vulkan-drivers libvulkan1
        else
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 || true
            major="$(mesa_major || true)"
            if [ -z "$major" ] || [ "$major" -lt 25 ]; then
                echo "setup-robotwin: SAPIEN needs a Vulkan driver: install Mesa >= 25 (mesa-vulkan-drivers) or an NVIDIA driver, or rerun with SKIP_APT=1 if you have one" >&2
            fi
        fi
    fi
fi

# ---- the venv ------------------------------------------------------------------------------------
# Every pin below is what was measured to run RoboTwin 2.0's five primitives-only tasks on CPU.
# The wheel's own pins (torch 2.8.0, sapien 3.0.0b1, scipy 1.10.1) are not needed and not honoured:
# `pip check` complaints about them are expected.
CORE_PINS=(numpy==1.26.4 sapien==3.0.3 mplib==0.2.1 gymnasium==0.29.1 transforms3d==0.4.2
           trimesh==4.4.3 toppra==0.6.3 PyYAML pillow imageio opencv-python-headless scipy
           msgpack pluggy packaging)
NODEPS_PINS=(open3d==0.18.0 rlinf-robotwin-runtime==0.1.3)
# Imported by RoboTwin's modules (open3d's and the description generator's own dependencies).
EXTRA_PINS=(plotly dash "pandas<2.3" "scikit-learn<1.6" tqdm addict pyquaternion configargparse huggingface-hub)

venv_works() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$REPO" <<'PY' >/dev/null 2>&1
import sys
from pathlib import Path
import numpy, sapien, mplib, msgpack  # noqa: F401
import robotwin.envs._base_task  # noqa: F401
import pushcut.envpool.server  # noqa: F401
import pushcut.plugins.envs.robotwin.runtime  # noqa: F401
from importlib.metadata import entry_points
assert "robotwin" in {ep.name for ep in entry_points(group="pushcut")}, "stale pushcut metadata"
assert Path(pushcut.__file__).resolve().parent == Path(sys.argv[1]) / "core", pushcut.__file__
assert numpy.__version__ == "1.26.4" and sapien.__version__.startswith("3.0.3"), (numpy.__version__, sapien.__version__)
PY
}

if venv_works; then
    echo "RoboTwin venv already works: $VENV"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
start=$(date +%s)
echo "creating the RoboTwin venv in $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'numpy==1.26.4\ntorch==2.13.0\n' >"$CONSTRAINTS"
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -c "$CONSTRAINTS" "${CORE_PINS[@]}"
"${PIP[@]}" --no-deps "${NODEPS_PINS[@]}"
"${PIP[@]}" -c "$CONSTRAINTS" "${EXTRA_PINS[@]}"
"${PIP[@]}" --no-deps -e "$REPO"
if ! venv_works; then
    echo "setup-robotwin: the venv in $VENV does not import RoboTwin and pushcut's env worker; see the traceback of: $VENV/bin/python -c 'import robotwin.envs._base_task, pushcut.plugins.envs.robotwin.runtime'" >&2
    exit 1
fi
echo "RoboTwin venv ready: $VENV (python: $VENV/bin/python) in $(( $(date +%s) - start )) s"
