"""The tool installed like a tool, against the lab: the wheel built from this checkout is installed with
its dependencies (pip, from its cache or index) into a fresh venv outside the checkout; from a folder
that holds only a hosts.toml, `gpufleet --list` and a dry-run `bootstrap` of a lab server run from it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import sh
from tests.unit.test_wheel import REPO, build_wheel, purelib


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tool")
    wheel = build_wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def run(venv: Path, folder: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=folder, capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(folder), "LANG": "C.UTF-8"},
                          timeout=600)


def test_installed_gpufleet_lists_its_tasks_and_dry_runs_a_lab_server(lab, tool, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "hosts.toml").write_bytes(lab.inventory_path.read_bytes())
    where = run(tool, folder, "python", "-c", "import gpufleet.tasks.tree as t, gpufleet.files as f; "
                "print(t.__file__, f.TEMPLATES, sep='\\n')")
    assert where.returncode == 0, where.stderr
    site = purelib(tool / "bin" / "python")
    assert all(line.startswith(site) for line in where.stdout.split()), where.stdout
    assert str(REPO) not in where.stdout
    listed = run(tool, folder, "gpufleet", "--list")
    assert listed.returncode == 0, listed.stderr
    assert "bootstrap" in listed.stdout and "docker.install" in listed.stdout and "lab." not in listed.stdout
    state = "ls -A /etc/apt/sources.list.d /etc/apt/keyrings 2>&1; dpkg-query -W -f '${Status}' docker-ce 2>&1"
    before = sh(lab, "gpu3", state)
    recap = tmp_path / "recap.json"
    dry = run(tool, folder, "gpufleet", "-H", "gpu3", "bootstrap", "--dry-run", "--json", str(recap))
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-2000:]
    assert "docker.install" in dry.stdout and "Traceback" not in dry.stderr
    steps = {s["step"]: s for s in json.loads(recap.read_text())["hosts"][0]["steps"]}
    assert {"docker.install", "docker.configure", "containers.run"} <= set(steps), steps
    assert all(s["status"] != "failed" for s in steps.values()), steps
    assert sh(lab, "gpu3", state) == before  # a dry run: nothing changed on the server
