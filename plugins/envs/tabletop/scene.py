"""The MuJoCo side of the tabletop env: model loading, episode layouts, the
gripper controller and the privileged state that success predicates and
scripted experts read.

Nothing here renders; see :mod:`.render`. Everything is deterministic: the
same :class:`Layout` followed by the same actions gives bit-identical state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from pushcut.errors import EnvError

ASSET = Path(__file__).with_name("tabletop.xml")
"""The MJCF scene. It sits next to this module (not in a sub-folder) so the
package's ``*.xml`` package-data pattern ships it in wheels."""

CUBES = ("red", "green", "blue")
CUBE_HALF = 0.025
"""Half edge of every cube (m); a resting cube's centre is at z = CUBE_HALF."""
PLATE_TOP = 0.01
PLATE_RADIUS = 0.055
TARGET_HALF = 0.05
BUTTON_TRAVEL = 0.012
BUTTON_TOP = 0.04
"""Height of the unpressed button cap's top face."""
DRAWER_RANGE = 0.12
HANDLE_Z = 0.06
CABINET_Y = 0.21
HANDLE_OFFSET_Y = -0.131
"""Handle bar centre relative to the cabinet origin when the drawer is shut."""
DRAWER_FRONT_OFFSET_Y = -0.076
"""Drawer front face relative to the cabinet origin when the drawer is shut."""

CONTROL_DT = 0.05
"""Seconds per env step (20 Hz control)."""
MAX_DELTA = 0.02
"""Gripper travel (m) per env step for an action component of 1.0."""
MAX_LAG = 0.03
"""The servo target never runs further than this ahead of the gripper, so pushing
against the drawer stop or the table does not wind up a large force."""
FINGER_MAX = 0.04
"""Opening of one finger from the centre line (m) when fully open."""
WORKSPACE_LOW = np.array([-0.28, -0.25, 0.02])
WORKSPACE_HIGH = np.array([0.28, 0.22, 0.25])
SETTLE_SUBSTEPS = 10
"""Physics substeps run at reset with the gripper holding still, so objects
placed exactly on surfaces settle into their contacts before the first action."""


@dataclass(frozen=True)
class Layout:
    """Everything that varies between initial states of the scene."""

    gripper: tuple[float, float, float]
    """Grip-point position (m); the gripper starts open."""
    cubes: dict[str, tuple[float, float, float]]
    """Cube name → (x, y, yaw) resting on the table."""
    plate: tuple[float, float]
    target: tuple[float, float]
    button: tuple[float, float]
    cabinet_x: float
    drawer: float = 0.0
    """Initial drawer opening (m), 0 = shut."""


class TabletopScene:
    """One MuJoCo model + data of the tabletop, with named accessors.

    ``n_substeps`` physics steps make one env step of :data:`CONTROL_DT` seconds.
    """

    def __init__(self) -> None:
        if not ASSET.is_file():
            raise EnvError(f"tabletop: scene file {ASSET} is missing; reinstall pushcut (it ships as package data)")
        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.n_substeps = max(1, round(CONTROL_DT / m.opt.timestep))

        def jnt(name: str) -> int:
            return int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)])

        def body(name: str) -> int:
            return int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name))

        def geom(name: str) -> int:
            return int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, name))

        self._grip_adr = np.array([jnt("grip_x"), jnt("grip_y"), jnt("grip_z")])
        self._finger_adr = np.array([jnt("finger_left"), jnt("finger_right")])
        self._cube_adr = {c: jnt(f"{c}_cube") for c in CUBES}
        self._drawer_adr = jnt("drawer")
        self._button_adr = jnt("button")
        self._body = {name: body(name) for name in ("plate", "target", "button_base", "cabinet")}
        self.finger_geoms = np.array([geom("finger_left"), geom("finger_right")])
        self.gripper_geoms = np.array([geom("palm"), *self.finger_geoms])
        # a finger pad's centre height above the grip point and its half height
        pad = self.finger_geoms[0]
        self._pad_z, self._pad_half = float(m.geom_pos[pad, 2]), float(m.geom_size[pad, 2])
        self.button_geoms = np.array([geom("button")])
        self.drawer_geoms = np.array([geom(g) for g in ("drawer", "handle_post_l", "handle_post_r", "handle")])
        self.cube_geoms = {c: geom(f"{c}_cube") for c in CUBES}
        self.camera_ids = {
            name: int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, name)) for name in ("agentview", "wrist")
        }
        self._default_body_pos = m.body_pos.copy()
        self.target_pos = np.zeros(3)
        """The gripper servo target; actions move it, the servos follow it."""
        self.finger_target = FINGER_MAX

    # ------------------------------------------------------------- episodes

    def apply_layout(self, layout: Layout) -> None:
        """Reset physics to ``layout`` (deterministic) and let contacts settle."""
        m, d = self.model, self.data
        m.body_pos[:] = self._default_body_pos
        m.body_pos[self._body["plate"], :2] = layout.plate
        m.body_pos[self._body["target"], :2] = layout.target
        m.body_pos[self._body["button_base"], :2] = layout.button
        m.body_pos[self._body["cabinet"], 0] = layout.cabinet_x
        mujoco.mj_resetData(m, d)
        d.qpos[self._grip_adr] = layout.gripper
        d.qpos[self._finger_adr] = FINGER_MAX
        for name, (x, y, yaw) in layout.cubes.items():
            adr = self._cube_adr[name]
            d.qpos[adr : adr + 3] = (x, y, CUBE_HALF)
            d.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        d.qpos[self._drawer_adr] = layout.drawer
        self.target_pos = np.array(layout.gripper, dtype=np.float64)
        self.finger_target = FINGER_MAX
        self._write_ctrl()
        mujoco.mj_step(m, d, nstep=SETTLE_SUBSTEPS)
        self._sync_poses()

    STATIC_BODIES = ("plate", "target", "button_base", "cabinet")
    """Bodies a layout moves (the model's ``body_pos``): part of the state with the physics."""

    def state_size(self) -> int:
        """Length of :meth:`get_state`'s vector."""
        return 3 * len(self.STATIC_BODIES) + mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION)

    def get_state(self) -> np.ndarray:
        """The full state, float64: the static bodies' positions, then MuJoCo's integration state
        (time, qpos, qvel, act, warm start, ctrl, applied forces: ``mj_getState``). The servo targets
        are the ctrl, so they come back with it."""
        physics = np.empty(mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(self.model, self.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        bodies = self.model.body_pos[[self._body[b] for b in self.STATIC_BODIES]].reshape(-1)
        return np.concatenate([bodies, physics])

    def set_state(self, state: np.ndarray) -> None:
        """Restore what :meth:`get_state` returned (the length is the caller's to check)."""
        m, d = self.model, self.data
        n = 3 * len(self.STATIC_BODIES)
        m.body_pos[:] = self._default_body_pos
        m.body_pos[[self._body[b] for b in self.STATIC_BODIES]] = np.asarray(state[:n]).reshape(-1, 3)
        mujoco.mj_resetData(m, d)
        mujoco.mj_setState(m, d, np.ascontiguousarray(state[n:], dtype=np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
        self.target_pos = d.ctrl[:3].copy()
        self.finger_target = float(d.ctrl[3])
        # positions, cameras and contacts of the restored qpos, as a step leaves them
        mujoco.mj_forward(m, d)

    def step(self, action: np.ndarray) -> None:
        """One env step: ``action`` = (dx, dy, dz, gripper), each in [-1, 1]."""
        a = np.clip(action, -1.0, 1.0)
        pos = self.grip_pos
        target = self.target_pos + a[:3] * MAX_DELTA
        target = np.clip(target, pos - MAX_LAG, pos + MAX_LAG)
        self.target_pos = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
        # -1 open ... +1 closed, linear in between, so partial openings are reachable.
        self.finger_target = float((1.0 - a[3]) / 2.0 * FINGER_MAX)
        self._write_ctrl()
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._sync_poses()

    def _sync_poses(self) -> None:
        # mj_step leaves body and camera poses at the start of its last substep;
        # recompute them from the final qpos so rendered frames match `proprio()`.
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    def _write_ctrl(self) -> None:
        self.data.ctrl[:3] = self.target_pos
        self.data.ctrl[3:5] = self.finger_target

    # ------------------------------------------------------------- state

    @property
    def grip_pos(self) -> np.ndarray:
        """Grip point (between the fingertips) in world coordinates, (3,)."""
        return self.data.qpos[self._grip_adr].copy()

    @property
    def finger_gap(self) -> float:
        """Distance between the inner finger faces (m)."""
        return float(self.data.qpos[self._finger_adr].sum())

    def proprio(self) -> np.ndarray:
        """The policy's ``state`` observation: grip point xyz and finger gap, float32 (4,)."""
        return np.append(self.grip_pos, self.finger_gap).astype(np.float32)

    def cube_pos(self, name: str) -> np.ndarray:
        adr = self._cube_adr[name]
        return self.data.qpos[adr : adr + 3].copy()

    @property
    def drawer_opening(self) -> float:
        return float(self.data.qpos[self._drawer_adr])

    @property
    def button_depth(self) -> float:
        """How far the button cap is pressed in (m, >= 0)."""
        return float(-self.data.qpos[self._button_adr])

    def body_xy(self, name: str) -> np.ndarray:
        """Position of a static body (plate, target, button_base, cabinet) on the table."""
        return self.model.body_pos[self._body[name], :2].copy()

    def handle_pos(self) -> np.ndarray:
        """World position of the drawer handle bar's centre."""
        cab = self.model.body_pos[self._body["cabinet"]]
        return np.array([cab[0], CABINET_Y + HANDLE_OFFSET_Y - self.drawer_opening, HANDLE_Z])

    def drawer_front_y(self) -> float:
        return CABINET_Y + DRAWER_FRONT_OFFSET_Y - self.drawer_opening

    def fingers_touch(self, cube: str) -> bool:
        """True if either finger is in contact with ``cube``."""
        return bool(self._contacts_with(self.cube_geoms[cube], self.finger_geoms).size)

    def fingers_grip(self, cube: str) -> bool:
        """True if both fingers touch ``cube`` with the cube's centre at the height of the finger
        pads: a pinch from the sides, not fingertips resting on its top face."""
        both = np.unique(self._contacts_with(self.cube_geoms[cube], self.finger_geoms)).size == 2
        return both and abs(self.cube_pos(cube)[2] - self.grip_pos[2] - self._pad_z) < self._pad_half

    def gripper_touches(self, geoms: np.ndarray) -> bool:
        """True if the palm or a finger is in contact with any of ``geoms``."""
        return bool(self._contacts_with(geoms, self.gripper_geoms).size)

    def _contacts_with(self, geoms, others: np.ndarray) -> np.ndarray:
        """The geoms of ``others`` in contact with any of ``geoms``, one entry per contact."""
        pairs = self.data.contact.geom[: self.data.ncon]
        # (contacts, 2, n) equality tables: np.isin costs ~15x more on arrays this small
        ours = (pairs[:, :, None] == np.atleast_1d(geoms)).any(axis=2)
        theirs = (pairs[:, :, None] == others).any(axis=2)
        return pairs[:, ::-1][ours & theirs[:, ::-1]]
