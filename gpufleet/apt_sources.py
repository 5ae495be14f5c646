"""Pure: apt sources for a container's own release, from a mirror base URL."""
from __future__ import annotations

import re

from gpufleet.errors import InputError
from gpufleet.osinfo import OsRelease, apt_sources_style

OFFICIAL = {"ubuntu": "http://archive.ubuntu.com/ubuntu", "debian": "http://deb.debian.org/debian"}
SECURITY = {"ubuntu": "http://security.ubuntu.com/ubuntu", "debian": "http://deb.debian.org/debian-security"}
COMPONENTS = {"ubuntu": "main restricted universe multiverse", "debian": "main contrib non-free"}
KEYRINGS = {"ubuntu": "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
            "debian": "/usr/share/keyrings/debian-archive-keyring.gpg"}
HEADER = "# Managed by gpufleet (inventory key apt_mirror); the original is kept as *.gpufleet.orig\n"


def render_sources(os: OsRelease, mirror: str | None, components: str | None = None) -> tuple[str, str]:
    """(path, text) of the sources file for this release: deb822 or classic, by release."""
    family = os.family
    if family is None or not os.base_codename:
        raise InputError(f"cannot write apt sources for {os.pretty_name or os.id or 'an unknown OS'}")
    base = (mirror or OFFICIAL[family]).rstrip("/")
    security = f"{base}-security" if mirror and family == "debian" else (base if mirror else SECURITY[family])
    codename = os.base_codename
    parts = components or COMPONENTS[family]
    if family == "debian" and os.version_id.split(".")[0].isdigit() and int(os.version_id.split(".")[0]) >= 12:
        parts = components or "main contrib non-free non-free-firmware"
    suites = [codename, f"{codename}-updates"]
    security_suite = f"{codename}-security"
    if apt_sources_style(os) == "deb822":
        path = f"/etc/apt/sources.list.d/{family}.sources"
        text = (HEADER + f"Types: deb\nURIs: {base}\nSuites: {' '.join(suites)}\nComponents: {parts}\n"
                f"Signed-By: {KEYRINGS[family]}\n\nTypes: deb\nURIs: {security}\nSuites: {security_suite}\n"
                f"Components: {parts}\nSigned-By: {KEYRINGS[family]}\n")
        return path, text
    lines = [f"deb {base} {suite} {parts}" for suite in suites]
    lines.append(f"deb {security} {security_suite} {parts}")
    return "/etc/apt/sources.list", HEADER + "\n".join(lines) + "\n"


def check_text(data: bytes, path: str) -> str:
    """The file's text; InputError for bytes that are not UTF-8 (we never rewrite what we can't read)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 at byte {e.start}; left untouched (convert it to UTF-8 first)") from None


def mirrors_in(text: str) -> list[str]:
    """URIs of active sources in classic or deb822 text (comments ignored)."""
    uris: list[str] = []
    for line in text.replace("\r\n", "\n").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"^deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?(\S+)", stripped)
        if m:
            uris.append(m.group(1))
            continue
        m = re.match(r"^URIs:\s*(.+)$", stripped, re.IGNORECASE)
        if m:
            uris += m.group(1).split()
    return list(dict.fromkeys(uris))
