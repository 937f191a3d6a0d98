"""Plugins shipped with pushcut. Each is registered through the package's own
``pushcut`` entry points, exactly like a third-party plugin."""
