"""The real OpenSSH client as a parser: `ssh -G` tells what a config means for an alias.

Always `-F FILE`, so /etc/ssh/ssh_config and ~/.ssh/config are not read; Include paths with `~` or relative
to ~/.ssh resolve under $HOME, which tests/conftest.py points at a temporary directory."""
import os
import shutil
import subprocess
from pathlib import Path

SSH = shutil.which("ssh")


def ssh_dump(config: Path, alias: str) -> tuple[int, str, str]:
    """`ssh -G -F config alias`: (exit code, the whole resolved configuration, stderr)."""
    done = subprocess.run([SSH, "-G", "-F", str(config), alias], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=20, env={**os.environ, "LC_ALL": "C"})
    return done.returncode, done.stdout, done.stderr


def ssh_resolve(config: Path, alias: str) -> tuple[int, dict[str, str], str]:
    """`ssh -G -F config alias`: (exit code, first value of each option, stderr)."""
    rc, stdout, stderr = ssh_dump(config, alias)
    options: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        options.setdefault(key, value)
    return rc, options, stderr
