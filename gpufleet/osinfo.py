"""Pure parsers of what a host runs: /etc/os-release and the kernel (WSL)."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

SUPPORTED = {"ubuntu": ("18.04", "20.04", "22.04", "24.04", "26.04"), "debian": ("11", "12", "13")}
# the codenames of those releases: how a derivative (Mint, Pop!_OS, LMDE...) says what it is built on
SUPPORTED_CODENAMES = {"ubuntu": ("bionic", "focal", "jammy", "noble", "resolute"),
                       "debian": ("bullseye", "bookworm", "trixie")}
# releases Docker's repository no longer gets new engines for: the last docker-ce line it built for them
DOCKER_CE_LAST = {("ubuntu", "bionic"): ("18.04", "24.0"), ("ubuntu", "focal"): ("20.04", "28.1")}
# releases whose apt still uses one-line sources.list; every later one ships deb822 *.sources files
CLASSIC_SOURCES = {"ubuntu": ("trusty", "xenial", "bionic", "cosmic", "disco", "eoan", "focal", "groovy", "hirsute",
                              "impish", "jammy", "kinetic", "lunar", "mantic"),
                   "debian": ("jessie", "stretch", "buster", "bullseye")}


@dataclass(frozen=True)
class OsRelease:
    id: str = ""
    id_like: tuple[str, ...] = ()
    version_id: str = ""
    codename: str = ""
    ubuntu_codename: str = ""
    pretty_name: str = ""
    debian_codename: str = ""

    @property
    def family(self) -> str | None:
        """"ubuntu" or "debian" (derivatives by ID_LIKE), else None."""
        for name in (self.id, *self.id_like):
            if name in ("ubuntu", "debian"):
                return "ubuntu" if name == "ubuntu" or "ubuntu" in self.id_like else name
        return None

    @property
    def base_codename(self) -> str:
        """The codename of the Ubuntu/Debian release underneath (Mint's UBUNTU_CODENAME, LMDE's DEBIAN_CODENAME)."""
        return self.ubuntu_codename or self.debian_codename or self.codename


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
        m = re.search(r"\(([a-z]+)\)", values.get("VERSION", ""))  # Debian's "11 (bullseye)", not "(Blue Onyx)"
        codename = m.group(1) if m else ""
    return OsRelease(
        id=values.get("ID", "").lower(),
        id_like=tuple(values.get("ID_LIKE", "").lower().split()),
        version_id=values.get("VERSION_ID", ""),
        codename=codename.lower(),
        ubuntu_codename=values.get("UBUNTU_CODENAME", "").lower(),
        pretty_name=values.get("PRETTY_NAME", ""),
        debian_codename=values.get("DEBIAN_CODENAME", "").lower(),
    )


def _kernel_release(uname_text: str) -> str:
    """The release field of `uname -a` ("Linux HOST RELEASE ...") or of `uname -r`."""
    fields = uname_text.split()
    if len(fields) >= 3 and fields[0] == "Linux":
        return fields[2]
    return fields[0] if fields else ""


def wsl_version(uname_text: str) -> int | None:
    """Pure: 2 for a WSL2 kernel ('-microsoft-standard', '-WSL2'), 1 for WSL1 ('4.4.0-18362-Microsoft'), else None.

    Only the kernel release is looked at, so a server whose host name contains "wsl" or "microsoft" is not WSL.
    """
    release = _kernel_release(uname_text)
    if re.search(r"microsoft-standard|wsl2", release, re.IGNORECASE):
        return 2
    if re.search(r"-Microsoft$", release):  # WSL1: a Windows build number as the patch level, capital M
        return 1
    if re.search(r"microsoft|wsl", release, re.IGNORECASE):
        return 2  # a custom WSL kernel build; only WSL2 runs real Linux kernels
    return None


def is_wsl(uname_text: str) -> bool:
    """Pure: WSL from `uname -a`/`-r`, WSL1 included.

    WSL1 says True too: it *is* WSL, and it is the worse case (no real kernel: no cgroups, so no Docker engine,
    and no GPU); use wsl_version() where the two differ.
    """
    return wsl_version(uname_text) is not None


def known_releases() -> str:
    """The releases the tool knows, in one phrase: what an unsupported system's line names."""
    def family(label: str, key: str) -> str:
        return f"{label} " + ", ".join(f"{v} ({c})" for v, c in zip(SUPPORTED[key], SUPPORTED_CODENAMES[key]))
    return f"gpufleet knows {family('Ubuntu', 'ubuntu')}, {family('Debian', 'debian')} and derivatives built on them"


def check_supported(os: OsRelease) -> str | None:
    """None when supported, else one line: what the system is, and the releases the tool knows."""
    family = os.family
    name = os.pretty_name or os.id or "unknown OS"
    if family is None:
        return f"{name} (ID={os.id or '?'}) is not Ubuntu, Debian or a derivative of them (ID_LIKE); {known_releases()}"
    if os.id not in SUPPORTED:
        if os.base_codename in SUPPORTED_CODENAMES[family]:
            return None
        if not os.base_codename:
            return f"{name}: cannot tell which {family} release it is built on; {known_releases()}"
        return f"{name} is built on {family} {os.base_codename!r}, which is not supported; {known_releases()}"
    if not os.version_id:
        return f"{name}: no VERSION_ID (testing/unstable is not supported); {known_releases()}"
    if os.version_id not in SUPPORTED[os.id]:
        label = name if os.version_id in name else f"{name} {os.version_id}"
        return f"{label} is not supported; {known_releases()}"
    return None


def docker_ce_end(os: OsRelease) -> str:
    """Why docker-ce stops at an older engine on this release ("" where Docker still builds new ones for it)."""
    if (os.family, os.base_codename) not in DOCKER_CE_LAST:
        return ""
    version, last = DOCKER_CE_LAST[os.family, os.base_codename]
    return f"Docker builds no docker-ce after {last} for Ubuntu {version} ({os.base_codename})"


def apt_sources_style(os: OsRelease) -> str:
    """"deb822" from Ubuntu 24.04 and Debian 12, "classic" before; a derivative goes by its base release."""
    family = os.family
    if os.id not in SUPPORTED and family:
        return "classic" if os.base_codename in CLASSIC_SOURCES[family] else "deb822"
    try:
        major = int(os.version_id.split(".")[0])
    except ValueError:
        return "deb822"
    if family == "ubuntu":
        return "deb822" if major >= 24 else "classic"
    return "deb822" if major >= 12 else "classic"
