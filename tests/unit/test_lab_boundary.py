"""The lab is not part of the product: gpufleet imports nothing from it, and the CLI starts without it."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_gpufleet_imports_neither_the_lab_nor_the_docker_sdk():
    for path in sorted((REPO / "gpufleet").glob("*.py")):
        assert not {"lab", "docker"} & imported_modules(path), path


def test_lab_tasks_import_the_lab_only_inside_their_bodies():
    tree = ast.parse((REPO / "tasks" / "lab.py").read_text())
    top_level = {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    top_level |= {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert not {"lab", "docker"} & top_level
    assert "lab" in imported_modules(REPO / "tasks" / "lab.py")     # ...but it does use it, lazily


def test_the_task_tree_loads_without_the_lab_or_the_docker_sdk():
    probe = ("import sys, fabfile; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lab', 'docker')))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
