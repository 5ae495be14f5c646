"""What every part of the lab shares: its error, its files, its labels, its cache and small helpers."""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from gpufleet.errors import FleetError

LAB_FILES = Path(__file__).resolve().parent / "files"
# Shared by every lab on this machine, like the images: the package mirror's downloads, keys and trees.
CACHE = Path(os.environ.get("GPUFLEET_LAB_CACHE", "/var/tmp/gpufleet-lab"))
ARCHIVE = "http://deb.debian.org/debian"

LABEL = "gpufleet.lab"              # value: the lab's prefix; on every container, network and volume
ROLE_LABEL = "gpufleet.lab.role"
NAME_LABEL = "gpufleet.lab.name"
SPEC_LABEL = "gpufleet.lab.spec"    # digest of a container's whole spec: a changed spec recreates it
RECIPE_LABEL = "gpufleet.lab.recipe"


class LabError(FleetError):
    """The lab could not be built, started or reached."""


def poll(what: str, check: Callable[[], bool], timeout: float, on_timeout: Callable[[], str] = lambda: "") -> None:
    """Call `check` until it answers true; LabError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}: {on_timeout()}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


@contextlib.contextmanager
def exclusive(path: Path, on_wait: Callable[[], None]):
    """Hold an exclusive lock on `path` (shared by every process on this machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def http_status(url: str, method: str = "GET", accept: str = "") -> int:
    """The HTTP status `url` answers with; 0 when nothing answers."""
    request = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def tar_bytes(files: dict[str, tuple[bytes, int, int]]) -> bytes:
    """A tar of {path: (content, mode, uid)}; a path ending in '/' is a directory, "->target" a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (content, mode, uid) in sorted(files.items()):
            info = tarfile.TarInfo(path.rstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, int(time.time())
            if path.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif content.startswith(b"->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:].decode()
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_atomic(path: Path, content: bytes, mode: int) -> None:
    """Write a local lab file (inventory, index) by rename, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    tmp.chmod(mode)
    tmp.replace(path)


def run(argv: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a local command; LabError naming `what` with the tail of its output when it fails."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        raise LabError(f"{what}: {argv[0]} exited {proc.returncode}: {tail(proc.stdout)}")
    return proc.stdout


def remove_container(client, name: str) -> None:
    import docker.errors
    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def remove_tree(root: Path) -> None:
    """rm -rf a build tree, first unmounting anything a failed debootstrap left mounted inside it."""
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as mounts:
        inside = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for mount in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(root, ignore_errors=True)


def tail(text: str, lines: int = 5) -> str:
    """The last lines of a command's output, on one line."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
