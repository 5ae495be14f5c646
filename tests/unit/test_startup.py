"""What a `fab` process costs before it does anything: the project's modules load from bytecode."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture
def project(tmp_path):
    """A copy of the project's code without any bytecode, as a fresh clone has it."""
    for part in ("fabfile.py", "fabric.yaml", "gpufleet", "tasks", "lab", "templates"):
        src = Path(REPO) / part
        if src.is_dir():
            shutil.copytree(src, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / part)
    return tmp_path


def fab_list(project, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    subprocess.run([sys.executable, "-m", "fabric", "--list"], cwd=project, check=True, capture_output=True,
                   env={**base, "PYTHONPATH": str(project), **env})


def test_fab_writes_the_projects_bytecode_that_invoke_would_not(project):
    fab_list(project)
    assert list((project / "gpufleet" / "__pycache__").glob("facts.*.pyc"))
    assert list((project / "tasks" / "__pycache__").glob("containers.*.pyc"))


def test_pythondontwritebytecode_still_wins(project):
    fab_list(project, PYTHONDONTWRITEBYTECODE="1")
    assert not (project / "gpufleet" / "__pycache__").exists()
