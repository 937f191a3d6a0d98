"""core/ installs as the import package `pushcut`, plugins/ as `pushcut.plugins`.

Only the package mapping lives here; all metadata is in pyproject.toml.
"""

from setuptools import find_packages, setup


def _packages(directory: str, prefix: str) -> list[str]:
    return [prefix] + [f"{prefix}.{name}" for name in find_packages(directory)]


setup(
    # configs/ ships too, as pushcut.configs, so `pushcut quickstart` finds its YAML after `pip install .`
    packages=_packages("core", "pushcut") + _packages("plugins", "pushcut.plugins") + ["pushcut.configs"],
    package_dir={"pushcut": "core", "pushcut.plugins": "plugins", "pushcut.configs": "configs"},
    package_data={"": ["*.xml", "*.yaml", "*.json", "*.png", "*.stl", "*.obj"]},
)
