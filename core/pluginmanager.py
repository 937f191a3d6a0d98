"""The plugin manager: loads every plugin in the ``pushcut`` entry-point group
(built-in ones included, through the package's own entry points), fills the
registries, and is the one place the engine calls hooks through.

Set ``PUSHCUT_DISABLE_PLUGIN_AUTOLOAD=1`` to load only pushcut's own built-in
plugins (what the tests do; they register anything else in-process).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from pushcut import hookspecs
from pushcut.errors import PluginError
from pushcut.registry import Registry

if TYPE_CHECKING:  # the contracts import torch; an env server's venv has none
    from pushcut.contracts import Env, Policy, SuccessDetector
    from pushcut.envpool.transport import Transport

DISABLE_AUTOLOAD_ENV = "PUSHCUT_DISABLE_PLUGIN_AUTOLOAD"
ENTRY_POINT_GROUP = "pushcut"
OWN_DISTRIBUTION = "pushcut"

REGISTRIES = (
    # attribute, kind (messages, ``pushcut plugins``), the hook that fills it
    ("policies", "policy", "pushcut_register_policies"),
    ("envs", "env", "pushcut_register_envs"),
    ("success_detectors", "success detector", "pushcut_register_success_detectors"),
    ("transports", "transport", "pushcut_register_transports"),
    ("robot_drivers", "robot driver", "pushcut_register_robot_drivers"),
)
"""Every registry the manager owns. A registry whose hook no plugin declared (the robot drivers' hook
comes with the real-robot plugin, through :func:`~pushcut.hookspecs.pushcut_addhooks`) stays empty."""


@dataclass
class PluginInfo:
    """What ``pushcut plugins`` shows for one plugin."""

    name: str
    source: str
    """``module`` the entry point names, or ``<in-process>``."""
    distribution: str
    """The pip distribution providing it (``pushcut`` for built-ins)."""
    status: str = "loaded"
    """``loaded``, ``unavailable`` (optional dependency missing) or ``broken`` (raised at import)."""
    reason: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)
    """kind → names this plugin registered."""


def load_ref(ref: str) -> Any:
    """The object an import reference names (``module`` or ``module:attr.path``)."""
    import importlib

    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class PluginManager:
    """Typed wrapper around pluggy: registries plus event-hook calls."""

    def __init__(self, autoload: bool | None = None) -> None:
        self.pm = pluggy.PluginManager("pushcut")
        self.pm.add_hookspecs(hookspecs)
        self.pm.hook.pushcut_addhooks.call_historic(kwargs={"pluginmanager": self})
        if autoload is None:
            autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        self.autoload = autoload
        self.infos: dict[str, PluginInfo] = {}
        self.policies: Registry[Policy] = Registry("policy")
        self.envs: Registry[Env] = Registry("env")
        self.success_detectors: Registry[SuccessDetector] = Registry("success detector")
        self.transports: Registry[Transport] = Registry("transport")
        self.robot_drivers: Registry[Any] = Registry("robot driver")
        self._registered_once: set[str] = set()

    # ------------------------------------------------------------- loading

    def load_entry_points(self) -> None:
        """Load plugins from the ``pushcut`` entry-point group; only pushcut's own
        when autoloading is disabled. A missing optional dependency marks the
        plugin unavailable; any other exception at import is a :class:`PluginError`
        (also recorded as ``broken`` first, so ``pushcut plugins`` can show it)."""
        broken: list[str] = []
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            if not self.autoload and _canonical(dist) != OWN_DISTRIBUTION:
                continue
            if ep.name in self.infos:
                continue
            info = PluginInfo(name=ep.name, source=ep.value, distribution=dist)
            self.infos[ep.name] = info
            try:
                module = ep.load()
            except ModuleNotFoundError as exc:
                missing = (exc.name or "").split(".")[0]
                if missing and _module_is_own(missing, ep.value):
                    info.status, info.reason = "broken", f"{type(exc).__name__}: {exc}"
                    broken.append(self._broken_message(info))
                    continue
                info.status = "unavailable"
                info.reason = f"needs {missing!r}: {install_hint(ep.dist, missing)}"
                for registry in self.registries():
                    registry.unavailable[ep.name] = info.reason
                continue
            except Exception as exc:  # a plugin raising at import must not take pushcut down with a traceback
                info.status, info.reason = "broken", f"{type(exc).__name__}: {exc}"
                broken.append(self._broken_message(info))
                continue
            self.pm.register(module, name=ep.name)
        self._register_components()
        if broken:
            raise PluginError(broken[0])

    @staticmethod
    def _broken_message(info: PluginInfo) -> str:
        return (
            f"plugin {info.name!r} ({info.source}, from {info.distribution}) failed to import: {info.reason}; "
            f"fix or uninstall {info.distribution}, or set {DISABLE_AUTOLOAD_ENV}=1 to skip third-party plugins"
        )

    @classmethod
    def from_refs(cls, refs: Any, autoload: bool = False) -> PluginManager:
        """A manager holding the plugins that import references name (``module`` or ``module:attr``;
        a class is instantiated), each registered under its reference, plus pushcut's entry points when
        ``autoload``. A reference that does not import is a :class:`ConfigError` naming it (the
        ``--plugin`` options of ``pushcut env serve`` / ``robot serve``, Ray workers, env specs)."""
        from pushcut.errors import ConfigError

        manager = cls(autoload=autoload)
        if autoload:
            manager.load_entry_points()
        for ref in refs:
            try:
                obj = load_ref(ref)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"plugin {ref!r} cannot be imported ({exc}); name a module or module:attr") from None
            manager.register(obj() if isinstance(obj, type) else obj, name=ref)
        return manager

    def source_of(self, kind: str, name: str) -> str:
        """The plugin that registered ``name`` in the ``kind`` registry ("policy", "env", "success
        detector", "transport", "robot driver"); a lookup error listing the names that exist otherwise."""
        registry = {r.kind: r for r in self.registries()}[kind]
        return registry.get(name).plugin

    def registry(self, attribute: str) -> Registry[Any]:
        """The registry named ``attribute`` in :data:`REGISTRIES` (``"transports"``): what a config field
        that picks a registered component (:func:`pushcut.config.choice`) resolves through."""
        if attribute not in {row[0] for row in REGISTRIES}:
            raise PluginError(f"no registry {attribute!r}; the registries are {', '.join(r[0] for r in REGISTRIES)}")
        return getattr(self, attribute)

    def add_hookspecs(self, module_or_class: object) -> None:
        """Declare more hooks (a plugin's :func:`~pushcut.hookspecs.pushcut_addhooks` calls this)."""
        self.pm.add_hookspecs(module_or_class)

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin (a module or object with hookimpls), e.g. in tests."""
        self.infos[name] = PluginInfo(name=name, source="<in-process>", distribution="<in-process>")
        self.pm.register(plugin, name=name)
        self._register_components()

    def unregister(self, name: str) -> None:
        """Remove an in-process plugin and everything it registered."""
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        for registry in self.registries():
            registry.remove_plugin(name)
        self._registered_once.discard(name)

    def registries(self) -> tuple[Registry[Any], ...]:
        return tuple(getattr(self, attribute) for attribute, _, _ in REGISTRIES)

    def _register_components(self) -> None:
        """Run the registration hooks of plugins not yet registered, one plugin at a
        time, so each entry records which plugin added it."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{exc}; hook names must match pushcut's hookspecs (see docs/plugins.md)") from None
        pending = [name for name, _ in self.pm.list_name_plugin() if name not in self._registered_once]
        for attribute, kind, hook_name in REGISTRIES:
            hook, registry = getattr(self.pm.hook, hook_name, None), getattr(self, attribute)
            if hook is None:  # a hook some plugin adds, and that plugin is not loaded
                continue
            for impl in hook.get_hookimpls():
                if impl.plugin_name not in pending:
                    continue
                registry.current_plugin = impl.plugin_name
                before = set(registry.names())
                try:
                    impl.function(registry=registry)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} raised in {hook.name}: {type(exc).__name__}: {exc}"
                    ) from None
                finally:
                    registry.current_plugin = "<unknown>"
                info = self.infos.setdefault(
                    impl.plugin_name, PluginInfo(impl.plugin_name, "<in-process>", "<in-process>")
                )
                info.registered.setdefault(kind.replace(" ", "_"), []).extend(sorted(set(registry.names()) - before))
        self._registered_once.update(pending)

    def register_commands(self, subparsers: Any) -> None:
        """Let plugins add ``pushcut`` subcommands (:func:`pushcut.hookspecs.pushcut_register_commands`)."""
        for impl in self.pm.hook.pushcut_register_commands.get_hookimpls():
            try:
                impl.function(subparsers=subparsers)
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} raised in pushcut_register_commands: "
                                  f"{type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------- events

    def run_start(self, run_dir: Path, config: dict[str, Any], command: str) -> None:
        self.pm.hook.pushcut_run_start(run_dir=run_dir, config=config, command=command)

    def after_rollout(self, run_dir: Path, step: int, metrics: dict[str, float]) -> None:
        self.pm.hook.pushcut_after_rollout(run_dir=run_dir, step=step, metrics=metrics)

    def after_update(self, run_dir: Path, step: int, metrics: dict[str, float]) -> None:
        self.pm.hook.pushcut_after_update(run_dir=run_dir, step=step, metrics=metrics)

    def after_eval(self, run_dir: Path, step: int, metrics: dict[str, float], videos: list[Path]) -> None:
        self.pm.hook.pushcut_after_eval(run_dir=run_dir, step=step, metrics=metrics, videos=videos)

    def run_end(self, run_dir: Path, summary: dict[str, Any]) -> None:
        self.pm.hook.pushcut_run_end(run_dir=run_dir, summary=summary)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _module_is_own(missing: str, entry_point_value: str) -> bool:
    """True when the missing module is the plugin's own package (a typo in the
    entry point), not an optional dependency."""
    return entry_point_value.split(":")[0].split(".")[0] == missing


def install_hint(dist: md.Distribution | None, missing_module: str) -> str:
    """The pip command that provides ``missing_module`` for a plugin of ``dist``:
    the distribution's extra that requires it when there is one."""
    from packaging.requirements import Requirement

    name = dist.name if dist is not None else "?"
    wanted = _canonical(missing_module)
    for spec in (dist.requires or []) if dist is not None else []:
        req = Requirement(spec)
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", str(req.marker or ""))
        if extra and _canonical(req.name) in {wanted, _canonical(missing_module.replace("_", "-"))}:
            return f'pip install "{name}[{extra.group(1)}]"'
    return f"pip install {missing_module}"


_MANAGER: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _MANAGER
    if _MANAGER is None:
        manager = PluginManager()
        _MANAGER = manager
        try:
            manager.load_entry_points()
        except PluginError:
            _MANAGER = None
            raise
    return _MANAGER


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests; after installing a plugin)."""
    global _MANAGER
    _MANAGER = None

