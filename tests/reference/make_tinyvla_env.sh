#!/usr/bin/env bash
# Build a CPU-only virtualenv holding the libraries the original TinyVLA code
# runs on, at the original's pinned versions, for the independent reference
# tests/reference/tinyvla_reference.py (used by
# tests/plugins/policies/test_tinyvla_reference.py).
#
#   tests/reference/make_tinyvla_env.sh DIR
#   PUSHCUT_TINYVLA_REF_PYTHON=DIR/bin/python pytest tests/plugins/policies/test_tinyvla_reference.py
#
# Versions: TinyVLA (liyaxuanliyaxuan/TinyVLA) pins transformers 4.37, peft 0.4
# and diffusers 0.11.1 ("requires diffusers==0.11.1" in its U-Net module).
# TinyVLA itself is not on PyPI and GitHub is not reachable where the tests
# run, so the reference re-states the original's modules on top of these
# libraries (see tinyvla_reference.py). torch is the CPU build, pinned and
# installed first so that nothing can pull a CUDA torch; torchvision is never
# installed (the original uses it for one Resize, which the reference states
# as the torch call torchvision makes).
#
# huggingface_hub is pinned below 0.26: diffusers 0.11 imports
# huggingface_hub.cached_download, which 0.26 removed. accelerate is what
# peft 0.4 imports; 0.26.1 is of transformers 4.37's time. numpy < 2 (the
# libraries of that time were built against numpy 1).
#
# Idempotent: if DIR already works, it does nothing.
# Set PYTHON to choose the interpreter (default: python3.11, else python3).
set -euo pipefail

VENV="${1:?usage: $0 VENV_DIR}"
TORCH_VERSION="2.13.0"
TRANSFORMERS_VERSION="4.37.2"
PEFT_VERSION="0.4.0"
DIFFUSERS_VERSION="0.11.1"

venv_works() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" "$PEFT_VERSION" "$DIFFUSERS_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.util, sys
import torch, transformers, peft, diffusers
from diffusers.schedulers.scheduling_ddim import DDIMScheduler  # noqa: F401
from transformers import CLIPImageProcessor, GPTNeoXModel, GPTNeoXTokenizerFast  # noqa: F401
from transformers.models.clip.modeling_clip import CLIPVisionTransformer  # noqa: F401
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert transformers.__version__ == sys.argv[2], transformers.__version__
assert peft.__version__ == sys.argv[3], peft.__version__
assert diffusers.__version__ == sys.argv[4], diffusers.__version__
assert importlib.util.find_spec("torchvision") is None, "torchvision must not be installed"
EOF
}

if venv_works; then
    echo "tinyvla reference venv already works: $VENV"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
echo "creating tinyvla reference venv in $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
cat >"$constraints" <<EOF
torch==$TORCH_VERSION
transformers==$TRANSFORMERS_VERSION
peft==$PEFT_VERSION
diffusers==$DIFFUSERS_VERSION
huggingface_hub<0.26
accelerate==0.26.1
numpy<2
EOF

pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

# torch first, on its own, so that nothing later can choose a CUDA torch.
pip_install -c "$constraints" "torch==$TORCH_VERSION"
pip_install -c "$constraints" "numpy<2" "transformers==$TRANSFORMERS_VERSION" "peft==$PEFT_VERSION" \
    "diffusers==$DIFFUSERS_VERSION" "huggingface_hub<0.26" "accelerate==0.26.1" safetensors tokenizers pillow

if ! venv_works; then
    echo "error: $VENV was built but does not import the pinned libraries:" >&2
    "$VENV/bin/python" -c "import torch, transformers, peft, diffusers; print(torch.__version__, transformers.__version__, peft.__version__, diffusers.__version__)" >&2 || true
    exit 1
fi
echo "tinyvla reference venv ready: PUSHCUT_TINYVLA_REF_PYTHON=$VENV/bin/python"
