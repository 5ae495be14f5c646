"""Pure: effective settings of an sshd_config (global part only; Include files are not read)."""
from __future__ import annotations

import re

# sshd separates words with ASCII blanks only: "PermitRootLogin\u00a0yes" is one (unknown) word to it
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*?)\s*$", re.ASCII)
# keywords whose every occurrence counts (sshd listens on every Port); for all others the first one wins
ACCUMULATING = frozenset({"port", "listenaddress", "hostkey", "hostcertificate", "acceptenv", "allowusers",
                          "denyusers", "allowgroups", "denygroups", "include"})


def _strip_comment(value: str) -> str:
    """sshd ends a line at a word that starts with "#" outside quotes (as `sshd -T` of OpenSSH 9.2 shows)."""
    quoted = False
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted and (i == 0 or value[i - 1] in " \t"):
            return value[:i].rstrip()
    return value


def _directives(text: str):
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            value = _strip_comment(m.group(2))
            if len(value) >= 2 and value[0] == value[-1] == '"' and '"' not in value[1:-1]:
                value = value[1:-1]  # one quoted word: sshd sees it without the quotes
            yield m.group(1).lower(), value


def effective_settings(text: str) -> dict[str, str]:
    """Keyword (lower case) → value, up to the first Match block, as sshd sees it: the first value wins,
    except for keywords sshd accumulates (Port, ListenAddress, HostKey, AcceptEnv, Allow/Deny Users/Groups),
    whose values are joined by a space.  Include is not followed (the caller reads those files)."""
    settings: dict[str, str] = {}
    for key, value in _directives(text):
        if key == "match":
            break
        if key in ACCUMULATING and key in settings:
            settings[key] += " " + value
        else:
            settings.setdefault(key, value)
    return settings


def includes(text: str) -> list[str]:
    """The Include patterns, in order (inside Match blocks too)."""
    return [value for key, value in _directives(text) if key == "include"]


def password_auth_enabled(text: str) -> bool:
    """sshd's default is yes: only an explicit `no` (before any Match) turns it off."""
    return effective_settings(text).get("passwordauthentication", "yes").lower() != "no"


def root_login(text: str) -> str:
    return effective_settings(text).get("permitrootlogin", "prohibit-password").lower()
