"""The one way the tool changes your files on this machine: the ssh config and the known_hosts file.

A temp file beside the target, flushed to disk, given the old file's mode (0600 for a new
one), then renamed over the target: a crash leaves the old file or the new one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

BACKUP_SUFFIX = ".gpufleet.bak"


def write_atomically(path: Path, data: bytes, *, backup: bool = False) -> None:
    """Replace `path` with `data`; with `backup`, the old file is copied to PATH.gpufleet.bak first.
    A `path` that is a symbolic link (a dotfile manager's) stays one: the file it leads to is replaced."""
    given = Path(path)
    path = Path(os.path.realpath(given)) if given.is_symlink() else given
    given.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.gpufleet-tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        if backup and path.exists():
            shutil.copy2(path, f"{given}{BACKUP_SUFFIX}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
