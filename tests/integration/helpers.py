"""Small helpers for lab tests: run a shell in a lab container, ssh through the generated config."""
import subprocess
from pathlib import Path


def sh(lab, host, script, user="root"):
    code, out = lab.exec(host, ["sh", "-c", script], user=user)
    return code, out.strip()


def ssh(lab, alias, command="hostname", config=None):
    config = config or lab.directory / "ssh_config"
    return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", alias, command],
                          capture_output=True, text=True, timeout=60)


def inventory_variant(lab, tmp_path: Path, name: str, replace: dict[str, str] | None = None,
                      append: str = "") -> Path:
    """A copy of the lab inventory with some lines replaced or tables appended."""
    text = lab.inventory_path.read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text + append)
    return path


FAB_CODE = ("gpufleet", "tasks", "templates", "fabfile.py", "fabric.yaml")


def runtime_files(project: str = "gpufleet") -> dict[str, Path]:
    """{path under site-packages: file} of every installed distribution the project needs at run time
    (its requirements, recursively, extras left out), read from their RECORD files."""
    import importlib.metadata as metadata
    import re
    todo, seen, files = [project], set(), {}
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                todo.append(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))
        if name == project:
            continue  # the project itself is copied from the checkout
        site = Path(dist.locate_file(""))
        for entry in dist.files or []:
            path = Path(dist.locate_file(entry))
            if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
                continue
            try:
                files[str(path.resolve().relative_to(site.resolve()))] = path
            except ValueError:
                continue  # console scripts in bin/
    return files


def install_fab(container, repo: Path, code_dir: str = "/opt/gpufleet", deps_dir: str = "/opt/gpufleet-deps") -> str:
    """Copy this checkout's code and its run-time dependencies from this venv into a lab container, so that
    `python3 -m fabric` runs there on the container's own Python (cp311 wheels; Debian 12 has 3.11).
    Returns the PYTHONPATH to use."""
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(source: Path, name: str) -> None:
            info = tar.gettarinfo(str(source), arcname=name.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if info.isdir() or source.stat().st_mode & 0o111 else 0o644
            with open(source, "rb") as data:
                tar.addfile(info, data)
        for top in FAB_CODE:
            root = repo / top
            for path in ([root] if root.is_file() else sorted(root.rglob("*"))):
                if path.is_file() and "__pycache__" not in path.parts:
                    add(path, f"{code_dir}/{path.relative_to(repo)}")
        for relative, path in sorted(runtime_files().items()):
            add(path, f"{deps_dir}/{relative}")
    assert container.put_archive("/", buffer.getvalue())
    return f"{code_dir}:{deps_dir}"
