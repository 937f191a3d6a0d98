"""The public face for serving an env over the wire, for plugins (docs/plugins.md lists it).

``pushcut env serve`` is built from these, and so is ``pushcut robot serve`` (the real-robot
plugin subclasses :class:`EnvServer`). They import no torch.
"""

from __future__ import annotations

from pushcut.envpool.host import EnvHost, serve_session
from pushcut.envpool.server import EnvServer, ServeOptions
from pushcut.envpool.wire import load_token
from pushcut.webguard import is_loopback

__all__ = ["EnvHost", "EnvServer", "ServeOptions", "is_loopback", "load_token", "serve_session"]
