#!/usr/bin/env bash
# Build a CPU-only virtualenv holding timm, used as the independent reference
# for OpenVLA's vision towers (tests/reference/timm_reference.py).
#
#   tests/reference/make_timm_env.sh DIR
#   DIR/bin/python tests/reference/timm_reference.py CHECKPOINT_DIR PIXELS.npy OUT.npz
#
# timm 0.9.16: OpenVLA's HF modeling_prismatic.py refuses any timm outside
# {0.9.10, 0.9.11, 0.9.12, 0.9.16} (timm 1.x changed the ViT code it relies
# on); 0.9.16 is the newest of those and installs here from PyPI.
#
# torchvision: timm imports torchvision (timm.data transforms), and the only
# torchvision built for torch 2.13 is 0.28.0, whose PyPI wheel is a CUDA build:
# its compiled torchvision/_C.so links libtorch_cuda.so, which the CPU torch
# lacks, so it cannot load. torchvision copes with that by itself (its C++ ops
# then raise "Couldn't load custom C++ ops" when called) except in one place:
# torchvision/_meta_registrations.py registers fake kernels for the ops
# torchvision::nms and torchvision::qnms unconditionally, and that fails with
# "operator torchvision::nms does not exist". So the real torchvision 0.28.0
# is installed unchanged, and a small import hook in this venv only
# (_torchvision_cpu_shim.py, run from a .pth file) declares those two op
# schemas -- the same ones _C.so would define, with no kernel -- just before
# torchvision is first imported, and only when _C.so does not load. No op
# gains an implementation; nms/roi_align/... stay unusable, and neither timm's
# ViT nor OpenVLA's featurizer call uses them. This was chosen over a stub
# torchvision package so that timm runs against the real torchvision code.
#
# venv_works checks every file of timm and torchvision against the sha256 in
# the wheel's RECORD, so the model code (timm.models.vision_transformer) is
# known to be exactly the released one.
#
# Idempotent: if DIR already works, it does nothing.
# Set PYTHON to choose the interpreter (default: python3.11, else python3).
set -euo pipefail

VENV="${1:?usage: $0 VENV_DIR}"
TIMM_VERSION="0.9.16"
TORCHVISION_VERSION="0.28.0"
TORCH_VERSION="2.13.0"
SHIM="_torchvision_cpu_shim"

venv_works() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TIMM_VERSION" "$TORCHVISION_VERSION" "$TORCH_VERSION" <<'EOF' >/dev/null 2>&1
import base64, hashlib, sys
from importlib import metadata
import torch
import timm
import torchvision
assert timm.__version__ == sys.argv[1], timm.__version__
assert torchvision.__version__.split("+")[0] == sys.argv[2], torchvision.__version__
assert torch.__version__.split("+")[0] == sys.argv[3], torch.__version__
# The reference is only as good as the code it runs: every installed file of
# timm and torchvision must match its wheel's RECORD hash.
for dist in ("timm", "torchvision"):
    for f in metadata.distribution(dist).files:
        if f.hash is None or f.hash.mode != "sha256":
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(f.locate().read_bytes()).digest())
        assert digest.rstrip(b"=").decode() == f.hash.value, f"{dist}: {f} differs from its wheel"
for model_id in ("vit_large_patch14_reg4_dinov2", "vit_so400m_patch14_siglip_224"):
    timm.create_model(model_id, pretrained=False, num_classes=0, img_size=224, depth=3)
EOF
}

if venv_works; then
    echo "timm reference venv already works: $VENV"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
echo "creating timm reference venv in $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# torch pinned to the CPU build (an unpinned torch pulls GBs of CUDA wheels);
# torchvision to the release built against that torch (it pins torch==2.13.0).
cat >"$constraints" <<EOF
torch==$TORCH_VERSION
torchvision==$TORCHVISION_VERSION
timm==$TIMM_VERSION
EOF

pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

# torch first, on its own, so that nothing later can choose a CUDA torch.
pip_install -c "$constraints" "torch==$TORCH_VERSION"
# timm's own dependencies (torchvision, pyyaml, huggingface_hub, safetensors)
# come with it; huggingface_hub is never used (pretrained=False).
pip_install -c "$constraints" "torchvision==$TORCHVISION_VERSION" "timm==$TIMM_VERSION" safetensors numpy
# Again from their wheels, so that a venv whose copy of either was edited is repaired.
pip_install --no-deps --force-reinstall "torchvision==$TORCHVISION_VERSION" "timm==$TIMM_VERSION"

site_packages="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat >"$site_packages/$SHIM.py" <<'EOF'
"""Let the CUDA-built torchvision wheel import beside the CPU torch.

Written by pushcut's tests/reference/make_timm_env.sh into this venv only
(see that script's header). When torchvision/_C.so cannot load, torchvision
still registers fake kernels for torchvision::nms and torchvision::qnms at
import; this declares those two schemas (as _C.so does, without any kernel)
right before torchvision's own code runs. torchvision itself is not changed.
"""

import importlib.machinery
import sys

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _declare_missing_ops(package_dir):
    import glob
    import os

    import torch

    for lib in glob.glob(os.path.join(package_dir, "_C*.so")):
        try:
            torch.ops.load_library(lib)  # what torchvision.extension does
        except OSError:
            pass
    for name, schema in _SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, name):
            torch.library.define(f"torchvision::{name}", schema)


class _Loader:
    """Wraps torchvision's own loader; runs the declaration first, once."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module):
        _declare_missing_ops(module.__path__[0])
        self._real.exec_module(module)


class _Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if _Finder not in sys.meta_path:
    sys.meta_path.insert(0, _Finder)
EOF
echo "import $SHIM" >"$site_packages/$SHIM.pth"

if ! venv_works; then
    echo "error: $VENV was built but cannot run timm $TIMM_VERSION's ViTs:" >&2
    "$VENV/bin/python" -c "import timm; timm.create_model('vit_so400m_patch14_siglip_224', pretrained=False, num_classes=0, depth=3)" >&2 || true
    exit 1
fi
echo "timm reference venv ready: $VENV/bin/python"
