"""Project rules that CI enforces: ruff clean, kaon/core free of torch, README and CI agree."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff not installed",
)
def test_ruff_lint_and_format_are_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    lint = subprocess.run(
        [ruff, "check", "kaon", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run(
        [ruff, "format", "--check", "kaon", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout


def test_core_does_not_import_torch():
    """kaon/core (block pool, KV cache manager, scheduler) stays plain Python."""
    for path in (ROOT / "kaon" / "core").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+torch", path.read_text(), re.MULTILINE), path


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    for marker in ("<!-- serve-command -->", "<!-- test-command -->"):
        assert readme.count(marker) == 1
    test_command = readme.split("<!-- test-command -->")[1].split("```bash\n")[1].split("\n")[0]
    assert "pytest" in test_command and "pip install" in test_command
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()
