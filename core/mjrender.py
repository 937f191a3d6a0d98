"""Offscreen rendering for MuJoCo env plugins (the tabletop, Meta-World), tuned for many tiny frames.

We drive MuJoCo's renderer directly (``MjrContext`` + ``mjr_render``) instead
of ``mujoco.Renderer`` because one env needs frames of two sizes from two
cameras (64 px observations, 128 px videos) and should hold a single GL
context for all of them; the offscreen buffer is sized to the largest frame.
This module imports MuJoCo: only an env plugin's simulator side imports it.

Backend choice (``gl_backend``): ``egl`` (headless, GPU when there is one, Mesa
llvmpipe otherwise) or ``osmesa`` (pure software). ``auto`` takes ``$MUJOCO_GL``
when it names one of those, else the backend this process already uses, else
``egl``. The choice is made when the env renders its first frame, before any GL
context exists. PyOpenGL binds one platform per process, so the first backend
loaded in a process is the only one it can use; asking for another afterwards
is an :class:`~pushcut.errors.EnvError` that says what to set instead.

Shadows, reflections, skybox and multisampling are off: at 64 px they add
nothing a policy needs, and with software GL a 4096² shadow map alone costs
~25 ms per frame.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from typing import Any

import mujoco
import numpy as np

from pushcut.errors import EnvError
from pushcut.gl import resolve_backend

_current: object | None = None
"""The renderer whose GL context is current in this process (per-thread GL state
is not a concern: env workers are single-threaded)."""


def _gl_context_class(backend: str, who: str) -> Any:
    loaded = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if loaded and loaded != backend:
        raise EnvError(
            f"{who}: gl_backend {backend!r} requested, but this process already uses the {loaded!r} OpenGL "
            f"platform (PYOPENGL_PLATFORM={loaded}) and one process can use only one: set gl_backend to "
            f"{loaded!r} or 'auto', or start Python with MUJOCO_GL={backend} and PYOPENGL_PLATFORM unset"
        )
    try:
        return importlib.import_module(f"mujoco.{backend}").GLContext
    except (ImportError, AttributeError, OSError) as exc:
        raise EnvError(
            f"{who}: cannot load the {backend!r} OpenGL backend ({exc}); install its system library "
            f"(egl: apt install libegl1, osmesa: apt install libosmesa6) or pick the other one with "
            f"gl_backend / MUJOCO_GL"
        ) from exc


class SceneRenderer:
    """Renders RGB frames of a model from its fixed cameras, reusing one GL context."""

    def __init__(self, model: mujoco.MjModel, max_size: int, backend: str = "auto", who: str = "env") -> None:
        self.backend = resolve_backend(backend)
        self.who = who
        """The env's name, for errors."""
        self._model = model
        # The offscreen framebuffer is allocated at MjrContext creation from these.
        model.vis.global_.offwidth = max_size
        model.vis.global_.offheight = max_size
        model.vis.quality.offsamples = 0
        self._gl: Any = None
        self._mjr: mujoco.MjrContext | None = None
        context_class = _gl_context_class(self.backend, who)
        try:
            self._gl = context_class(max_size, max_size)
            self._make_current(force=True)
            self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        except EnvError:
            raise
        except Exception as exc:  # GL failures surface as assorted PyOpenGL / RuntimeError types
            raise EnvError(
                f"{who}: could not create an offscreen OpenGL context with backend {self.backend!r}: {exc}. "
                f"Try gl_backend='osmesa' (software) or check the EGL driver."
            ) from exc
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)
        self._scene = mujoco.MjvScene(model, maxgeom=max(200, 2 * model.ngeom))
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_FOG):
            self._scene.flags[flag] = 0
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._max_size = max_size

    def _make_current(self, force: bool = False) -> None:
        global _current
        if force or _current is not self:
            self._gl.make_current()
            _current = self

    def render(self, data: mujoco.MjData, camera_id: int, size: int) -> np.ndarray:
        """An RGB (size, size, 3) uint8 frame from fixed camera ``camera_id``."""
        if self._mjr is None:
            raise EnvError(f"{self.who}: render() called after close()")
        if size > self._max_size:
            raise EnvError(f"{self.who}: frame size {size} exceeds the renderer's buffer ({self._max_size})")
        self._make_current()
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        rect = mujoco.MjrRect(0, 0, size, size)
        mujoco.mjr_render(rect, self._scene, self._mjr)
        out = np.empty((size, size, 3), dtype=np.uint8)
        mujoco.mjr_readPixels(out, None, rect, self._mjr)
        return np.ascontiguousarray(out[::-1])  # OpenGL rows run bottom-up

    def close(self) -> None:
        """Free the MuJoCo render context and the GL context (idempotent)."""
        global _current
        if self._mjr is not None:
            self._make_current()
            self._mjr.free()
            self._mjr = None
        if self._gl is not None:
            try:
                self._gl.free()
            except ctypes.ArgumentError:
                # mujoco 4.0's OSMesa free() passes None where PyOpenGL wants a
                # buffer when unbinding; the context itself is already destroyed
                # or dies with the process, so there is nothing left to do.
                pass
            self._gl = None
        if _current is self:
            _current = None
