"""Pure: effective settings of an sshd_config (first value wins, global part only)."""
from __future__ import annotations

import re

_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*?)\s*$")


def effective_settings(text: str) -> dict[str, str]:
    """Keyword (lower case) → first value, up to the first Match block; Include is not followed."""
    settings: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key == "match":
            break
        settings.setdefault(key, value)
    return settings


def includes(text: str) -> list[str]:
    return [v for k, v in ((m.group(1).lower(), m.group(2)) for m in map(_LINE.match, text.splitlines()) if m)
            if k == "include"]


def password_auth_enabled(text: str) -> bool:
    """sshd's default is yes: only an explicit `no` (before any Match) turns it off."""
    return effective_settings(text).get("passwordauthentication", "yes").lower() != "no"


def root_login(text: str) -> str:
    return effective_settings(text).get("permitrootlogin", "prohibit-password").lower()
