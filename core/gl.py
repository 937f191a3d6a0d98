"""Which OpenGL platform a headless MuJoCo env renders with.

``egl`` is headless and uses the GPU when there is one (Mesa llvmpipe
otherwise); ``osmesa`` is pure software. PyOpenGL binds one platform per
process, so ``auto`` follows what the process was started with.
"""

from __future__ import annotations

import os

GL_BACKENDS = ("auto", "egl", "osmesa")
"""Valid values of an env config's ``gl_backend``."""


def resolve_backend(name: str) -> str:
    """``auto`` → ``$MUJOCO_GL`` if it is egl/osmesa, else the PyOpenGL platform
    already chosen in this process (``$PYOPENGL_PLATFORM``), else ``egl``."""
    if name != "auto":
        return name
    for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        value = os.environ.get(var, "").strip().lower()
        if value in ("egl", "osmesa"):
            return value
    return "egl"
