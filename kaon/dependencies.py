"""Optional packages: checked before a command starts work, with the install command in the error.

The engine needs none of them. ``require`` looks the package up without importing it, so the
check is instant and runs before torch or the model load.
"""

from __future__ import annotations

import importlib.util

# package import name -> the pyproject extra that installs it
OPTIONAL_PACKAGES = {"transformers": "hf"}


def require(package: str, feature: str) -> None:
    """Raise unless ``package`` (an import name in ``OPTIONAL_PACKAGES``) can be imported.

    Raises:
        ValueError: naming ``feature`` (e.g. ``--compare-hf``), the package and the command that
            installs it (``pip install 'kaon[hf]'``, or the package alone).
    """
    if importlib.util.find_spec(package) is not None:
        return
    extra = OPTIONAL_PACKAGES[package]
    raise ValueError(
        f"{feature} needs the optional package {package!r}, which is not installed: "
        f"pip install -e '.[{extra}]' in a kaon checkout (or: pip install {package})"
    )
