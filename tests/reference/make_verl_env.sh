#!/usr/bin/env bash
# Build a CPU-only virtualenv holding verl, used as the independent reference
# for pushcut.algos (tests/core/test_algos_vs_verl.py).
#
#   tests/reference/make_verl_env.sh DIR
#   PUSHCUT_VERL_PYTHON=DIR/bin/python pytest tests/core/test_algos_vs_verl.py
#
# verl's own requirements (vllm/sglang extras, ray[default], wandb, datasets,
# peft, ...) would drag in CUDA torch and hundreds of MB we do not need, so
# verl is installed with --no-deps, plus only the packages that importing
# verl.trainer.ppo.core_algos actually needs, with verl's own version pins.
# torch stays pinned to the project's CPU build.
#
# Idempotent: if DIR already imports the expected verl, it does nothing.
# Set PYTHON to choose the interpreter (default: python3.11, else python3).
set -euo pipefail

VENV="${1:?usage: $0 VENV_DIR}"
VERL_VERSION="0.9.1"
TORCH_VERSION="2.13.0"

venv_works() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VERL_VERSION" "$TORCH_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import torch
import verl
import verl.trainer.ppo.core_algos  # noqa: F401  (the module we compare against)
assert verl.__version__ == sys.argv[1], verl.__version__
assert torch.__version__.split("+")[0] == sys.argv[2], torch.__version__
EOF
}

if venv_works; then
    echo "verl reference venv already works: $VENV"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
echo "creating verl reference venv in $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# torch pinned to the CPU build (an unpinned torch pulls GBs of CUDA wheels);
# the rest are verl $VERL_VERSION's own pins for the packages it imports.
cat >"$constraints" <<EOF
torch==$TORCH_VERSION
numpy>=2.0.0
packaging>=20.0
ray>=2.41.0
tensordict>=0.8.0,<=0.10.0,!=0.9.0
transformers>=5.5.3,<5.11,!=5.6.0
EOF

pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

# What `import verl.trainer.ppo.core_algos` needs (found by importing and
# installing each missing module): verl/__init__ imports ray (via protocol)
# and tensordict; core_algos imports omegaconf, codetiming, orjson and
# transformers (via verl.workers.config).
pip_install -c "$constraints" \
    "torch==$TORCH_VERSION" numpy packaging ray tensordict omegaconf \
    transformers codetiming orjson
pip_install --no-deps "verl==$VERL_VERSION"

if ! venv_works; then
    echo "error: $VENV was built but cannot import verl.trainer.ppo.core_algos:" >&2
    "$VENV/bin/python" -c "import verl.trainer.ppo.core_algos" >&2 || true
    exit 1
fi
echo "verl reference venv ready: PUSHCUT_VERL_PYTHON=$VENV/bin/python"
