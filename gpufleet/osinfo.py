"""Pure parsers of what a host runs: /etc/os-release and the kernel (WSL)."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

SUPPORTED = {"ubuntu": ("18.04", "20.04", "22.04", "24.04"), "debian": ("11", "12")}


@dataclass(frozen=True)
class OsRelease:
    id: str = ""
    id_like: tuple[str, ...] = ()
    version_id: str = ""
    codename: str = ""
    ubuntu_codename: str = ""
    pretty_name: str = ""

    @property
    def family(self) -> str | None:
        """"ubuntu" or "debian" (derivatives by ID_LIKE), else None."""
        for name in (self.id, *self.id_like):
            if name in ("ubuntu", "debian"):
                return "ubuntu" if name == "ubuntu" or "ubuntu" in self.id_like else name
        return None

    @property
    def base_codename(self) -> str:
        """The codename of the Ubuntu/Debian release underneath (Mint's UBUNTU_CODENAME)."""
        return self.ubuntu_codename or self.codename


def parse_os_release(text: str) -> OsRelease:
    """Pure: /etc/os-release (shell-style KEY=value, quotes, comments) → OsRelease."""
    values: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw, comments=True)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = parts[0] if parts else ""
    codename = values.get("VERSION_CODENAME", "")
    if not codename:
        m = re.search(r"\(([a-z]+)", values.get("VERSION", ""))
        codename = m.group(1) if m else ""
    return OsRelease(
        id=values.get("ID", "").lower(),
        id_like=tuple(values.get("ID_LIKE", "").lower().split()),
        version_id=values.get("VERSION_ID", ""),
        codename=codename.lower(),
        ubuntu_codename=values.get("UBUNTU_CODENAME", "").lower(),
        pretty_name=values.get("PRETTY_NAME", ""),
    )


def is_wsl(uname_text: str) -> bool:
    """Pure: WSL from `uname -a`/`-r` ('microsoft-standard', 'WSL2', WSL1's 'Microsoft')."""
    return bool(re.search(r"microsoft|wsl", uname_text, re.IGNORECASE))


def check_supported(os: OsRelease) -> str | None:
    """None when supported, else a one-line reason."""
    family = os.family
    if family is None:
        return f"{os.pretty_name or os.id or 'unknown OS'} is not Ubuntu or Debian"
    if os.id not in SUPPORTED:
        return None if os.base_codename else f"{os.pretty_name}: cannot tell the release codename"
    if not os.version_id:
        return f"{os.pretty_name or os.id}: no VERSION_ID (testing/unstable is not supported)"
    if os.version_id not in SUPPORTED[os.id]:
        return (f"{os.pretty_name or os.id} {os.version_id} is not supported "
                f"({os.id} {', '.join(SUPPORTED[os.id])} are)")
    return None


def apt_sources_style(os: OsRelease) -> str:
    """"deb822" from Ubuntu 24.04 and Debian 12, "classic" before."""
    try:
        major = int(os.version_id.split(".")[0])
    except ValueError:
        return "deb822"
    if os.family == "ubuntu":
        return "deb822" if major >= 24 else "classic"
    return "deb822" if major >= 12 else "classic"
