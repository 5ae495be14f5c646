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
