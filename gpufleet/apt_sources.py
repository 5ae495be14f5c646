"""Pure: apt sources for a container's own release, from a mirror base URL."""
from __future__ import annotations

import re

from gpufleet.errors import InputError
from gpufleet.osinfo import OsRelease, apt_sources_style

OFFICIAL = {"ubuntu": "http://archive.ubuntu.com/ubuntu", "debian": "http://deb.debian.org/debian"}
PORTS = "http://ports.ubuntu.com/ubuntu-ports"
SECURITY = {"ubuntu": "http://security.ubuntu.com/ubuntu", "debian": "http://deb.debian.org/debian-security"}
COMPONENTS = {"ubuntu": "main restricted universe multiverse", "debian": "main contrib non-free"}
KEYRINGS = {"ubuntu": "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
            "debian": "/usr/share/keyrings/debian-archive-keyring.gpg"}
HEADER = "# Managed by gpufleet (inventory key apt_mirror); the original is kept as *.gpufleet.orig\n"


def render_sources(os: OsRelease, mirror: str | None, components: str | None = None,
                   arch: str = "amd64") -> tuple[str, str]:
    """(path, text) of the sources file for this release: deb822 or classic, by release.

    Ubuntu serves amd64/i386 from /ubuntu and every other architecture (arm64: GH200 hosts) from
    /ubuntu-ports; a mirror follows the same layout ("https://m/ubuntu" → "https://m/ubuntu-ports").
    """
    family = os.family
    if family is None or not os.base_codename:
        raise InputError(f"cannot write apt sources for {os.pretty_name or os.id or 'an unknown OS'}")
    ports = family == "ubuntu" and arch not in ("amd64", "i386")
    if mirror:
        base = mirror.rstrip("/")
        if ports and not base.endswith("-ports"):
            base += "-ports"
    else:
        base = PORTS if ports else OFFICIAL[family]
    if mirror and family == "debian":
        security = f"{base}-security"
    elif mirror or ports:
        security = base
    else:
        security = SECURITY[family]
    codename = os.base_codename
    parts = components or COMPONENTS[family]
    if family == "debian" and codename not in ("jessie", "stretch", "buster", "bullseye"):
        parts = components or "main contrib non-free non-free-firmware"  # split out of non-free in Debian 12
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


_CLASSIC = re.compile(r"^deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?(cdrom:\[[^\]]*\]/?|\S+)")


def _deb822_stanzas(lines: list[str]):
    """{field (lower case): value} per stanza; continuation lines joined, comment lines skipped."""
    stanza: dict[str, str] = {}
    last = None
    for line in lines + [""]:
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, None
        elif line.lstrip().startswith("#"):
            continue
        elif line[0] in " \t" and last:
            stanza[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            last = last.strip().lower()
            stanza[last] = value.strip()


def mirrors_in(text: str) -> list[str]:
    """URIs of active sources in classic or deb822 text (comments and `Enabled: no` stanzas ignored)."""
    uris: list[str] = []
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")  # a BOM breaks apt: find it anyway
    for line in lines:
        m = _CLASSIC.match(line.strip())
        if m:
            uris.append(m.group(1))
    for stanza in _deb822_stanzas([line for line in lines if not _CLASSIC.match(line.strip())]):
        if stanza.get("enabled", "yes").lower() != "no":
            uris += stanza.get("uris", "").split()
    return list(dict.fromkeys(uris))
