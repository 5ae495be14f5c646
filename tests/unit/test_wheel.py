"""The tool installed like a tool: the wheel built from this tree (offline, no build isolation), installed
into a fresh venv outside the checkout, runs `gpufleet --list` and a dry-run `bootstrap` from a folder
that holds only a hosts.toml, with its own modules and templates, not the checkout's."""
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def purelib(python: Path | str) -> str:
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def build_wheel(tmp: Path) -> Path:
    """The wheel of the checkout's tracked files, built offline (no build isolation) under `tmp`."""
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout (the wheel is built from its tracked files)")
    src, dist = tmp / "src", tmp / "dist"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(dist), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    return next(dist.glob("gpufleet-*.whl"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; the dependencies come from this venv (a .pth line), never
    the project itself (a .pth line does not run the editable install's own .pth)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    (Path(purelib(python)) / "gpufleet-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


def test_the_wheel_puts_only_gpufleet_into_site_packages(wheel):
    """No generic top-level name (`tasks`, `templates`): the stages are gpufleet.tasks, the templates
    gpufleet/templates."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"gpufleet"}, sorted(top)
    assert {"gpufleet/tasks/tree.py", "gpufleet/tasks/docker.py", "gpufleet/templates/sshd_config.j2",
            "gpufleet/templates/docker.sources.j2"} <= set(names)


def run(venv: Path, folder: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=folder, capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(folder), "LANG": "C.UTF-8"},
                          timeout=300)


def test_the_wheel_runs_from_a_folder_with_only_a_hosts_toml(installed, tmp_path):
    (tmp_path / "hosts.toml").write_text('[hosts.ws]\naddress = "local"\ndocker_source = "distro"\n')
    where = run(installed, tmp_path, "python", "-c", "import gpufleet, gpufleet.tasks as t, gpufleet.files as f; "
                "print(gpufleet.__file__, t.__file__, f.TEMPLATES, sep='\\n')")
    assert where.returncode == 0, where.stderr
    site = purelib(installed / "bin" / "python")
    assert all(line.startswith(site) for line in where.stdout.split()), where.stdout  # not the checkout's
    assert "No module named 'tasks'" in run(installed, tmp_path, "python", "-c", "import tasks").stderr
    listed = run(installed, tmp_path, "gpufleet", "--list")
    assert listed.returncode == 0 and "bootstrap" in listed.stdout and "ops.rm" in listed.stdout, listed.stderr
    assert "lab." not in listed.stdout  # the lab drives the checkout's lab/ package, not in the wheel
    # every stage reads its templates and the local host's real facts; nothing is changed
    dry = run(installed, tmp_path, "gpufleet", "-H", "ws", "bootstrap", "--dry-run")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-2000:]
    assert "docker.configure" in dry.stdout and "Traceback" not in dry.stderr


def test_the_wheel_runs_on_python_3_10_as_it_says(wheel):
    """requires-python says 3.10 (Ubuntu 22.04's python3), which has no tomllib: the wheel asks for tomli
    there, and the inventory and containerd's config are read with it."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Python: >=3.10" in meta
    assert "Requires-Dist: tomli>=2; python_version < \"3.11\"" in meta, meta
    hidden = ("import sys, tomllib; sys.modules['tomllib'] = None; sys.modules['tomli'] = tomllib; "
              "from gpufleet import inventory, containerd_config; print(inventory.tomllib.__name__)")
    read = subprocess.run([sys.executable, "-c", hidden], cwd=REPO, capture_output=True, text=True)
    assert read.returncode == 0 and read.stdout.strip() == "tomllib", read.stderr[-2000:]


def test_the_stages_import_each_other_relatively():
    """Installed, tasks/ is gpufleet.tasks: an absolute `tasks.` import anywhere in it (a late import inside
    a function included) would fail only when that code runs."""
    import ast
    absolute = []
    for path in sorted((REPO / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            absolute += [f"{path.name}:{node.lineno}" for name in names if name.split(".")[0] == "tasks"]
    assert absolute == []
