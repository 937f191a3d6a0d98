"""Ready-to-run YAML configs (installed as pushcut.configs)."""
