"""The real OpenSSH client as a parser: `ssh -G` tells what a config means for an alias."""
import os
import shutil
import subprocess
from pathlib import Path

SSH = shutil.which("ssh")


def ssh_resolve(config: Path, alias: str) -> tuple[int, dict[str, str], str]:
    """`ssh -G -F config alias`: (exit code, first value of each option, stderr)."""
    done = subprocess.run([SSH, "-G", "-F", str(config), alias], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=20, env={**os.environ, "LC_ALL": "C"})
    options: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        options.setdefault(key, value)
    return done.returncode, options, done.stderr
