"""Pure: the managed block in the workstation's ssh config.

ssh takes the first value it finds for each option, and a Host or Match line
scopes everything after it.  So the block goes near the top: below the leading
Include lines (global, and tools like OrbStack need theirs first) or else below
a leading comment header, and always above the first Host/Match line, so never
inside one; no option the user wrote further down can override our HostName,
User or host-key pinning.  The block ends with `Host *`, so the user's lines after it
apply to every host as before instead of only to our last alias.  Everything
outside the block is preserved byte for byte (CRLF, tabs, no final newline,
`key=value`, non-UTF-8 bytes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpufleet.errors import InputError

BEGIN = "# BEGIN gpufleet managed block -- do not edit; `fab gen-ssh-config` rewrites it"
END = "# END gpufleet managed block"
_INCLUDE_LINE = re.compile(rb"^[ \t]*include([ \t]*=|[ \t]+)", re.IGNORECASE)
RESET = ["# the lines below this block apply to every host again", "Host *"]


@dataclass
class SshHostEntry:
    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_file: str | None = None
    proxy_jump: str | None = None
    host_key_alias: str | None = None
    known_hosts_file: str | None = None
    forward_agent: bool = False
    extra: dict = field(default_factory=dict)


_WORD = re.compile(r"[A-Za-z0-9_.@:+\[\]-]+")


def _value(entry: SshHostEntry, what: str, value, path: bool = False) -> str:
    """One ssh_config argument: quoted when it has blanks, `%` doubled in paths (ssh expands %-tokens there).

    InputError for what cannot be one argument: a line break would let a value start a new directive
    (`HostName x` + newline + `ProxyCommand ...`), a double quote would end the quoting."""
    text = str(value)
    if not text or any(c in text for c in '"\r\n\0'):
        raise InputError(f"ssh config: {entry.alias}: {what} {text!r} cannot be written "
                         "(empty, or has a quote or a line break)")
    if path:
        text = text.replace("%", "%%")
    return f'"{text}"' if any(c in text for c in " \t#=") else text


def render_block(entries: list[SshHostEntry]) -> str:
    """The managed block, LF line endings, ending with a newline; InputError for a value ssh can't take."""
    lines = [BEGIN]
    for e in entries:
        if not _WORD.fullmatch(e.alias):
            raise InputError(f"ssh config: alias {e.alias!r} must be one word without wildcards")
        lines += ["", f"Host {e.alias}", f"    HostName {_value(e, 'hostname', e.hostname)}"]
        # Port, the proxy and ForwardAgent are written even at their defaults: the user's lines after the
        # block (under `Host *`) would otherwise set them for our aliases
        lines.append(f"    Port {int(e.port)}")
        if e.user:
            lines.append(f"    User {_value(e, 'user', e.user)}")
        if e.identity_file:
            lines += [f"    IdentityFile {_value(e, 'identity_file', e.identity_file, path=True)}",
                      "    IdentitiesOnly yes"]
        if e.proxy_jump:
            lines.append(f"    ProxyJump {_value(e, 'proxy_jump', e.proxy_jump)}")
        else:  # `ProxyJump none` would not stop a later ProxyCommand; this stops both
            lines.append("    ProxyCommand none")
        if e.host_key_alias:
            lines.append(f"    HostKeyAlias {_value(e, 'host_key_alias', e.host_key_alias)}")
        if e.known_hosts_file:
            lines += [f"    UserKnownHostsFile {_value(e, 'known_hosts_file', e.known_hosts_file, path=True)}",
                      "    StrictHostKeyChecking yes"]
        lines.append(f"    ForwardAgent {'yes' if e.forward_agent else 'no'}")
        for keyword, value in e.extra.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", keyword) or keyword.lower() in ("host", "match", "include"):
                raise InputError(f"ssh config: {e.alias}: {keyword!r} is not an option keyword")
            value = ("yes" if value else "no") if isinstance(value, bool) else value
            lines.append(f"    {keyword} {_value(e, keyword, value)}")
    lines += ["", *RESET, END]
    return "\n".join(lines) + "\n"


def _lines(data: bytes) -> list[bytes]:
    """Lines with their endings, split on LF only, as ssh reads them (a lone CR is not a line break)."""
    lines = data.split(b"\n")
    return [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _find_block(lines: list[bytes], path: str) -> tuple[int, int] | None:
    start = next((i for i, l in enumerate(lines) if l.strip().startswith(BEGIN.encode()[:30])), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if lines[i].strip() == END.encode()), None)
    if end is None:
        raise InputError(f"{path}:{start + 1}: the gpufleet block has no '{END}' line; "
                         "restore it or delete the block by hand (nothing was changed)")
    return start, end


def _insert_at(lines: list[bytes]) -> int:
    """Below the leading Include lines (an Include before any Host is global and often must come
    first), else below a leading comment header that a blank line ends; always above the first
    Host/Match, so never inside one."""
    last_include, i = None, 0
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(b"#") or _INCLUDE_LINE.match(lines[i])):
        if _INCLUDE_LINE.match(lines[i]):
            last_include = i
        i += 1
    if last_include is not None and lines[last_include].endswith(b"\n"):
        return last_include + 1
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith(b"#"):
        i += 1
    if 0 < i < len(lines) and not lines[i].strip() and lines[i].endswith(b"\n"):
        return i + 1
    return 0


def update(existing: bytes, block: str, path: str = "ssh config") -> bytes:
    """`existing` with the managed block replaced, or inserted where it is safe (see the module docstring).

    InputError (naming `path`) when an earlier block lost its END line: replacing up to some later END
    could eat the user's lines.
    """
    lines = _lines(existing)
    crlf = b"\r\n" in existing
    body = block.replace("\n", "\r\n").encode() if crlf else block.encode()
    eol = b"\r\n" if crlf else b"\n"
    found = _find_block(lines, path)
    if found:
        start, end = found
        return b"".join(lines[:start]) + body + b"".join(lines[end + 1:])
    at = _insert_at(lines)
    rest = b"".join(lines[at:])
    return b"".join(lines[:at]) + body + (eol + rest if rest else b"")


def remove_block(existing: bytes, path: str = "ssh config") -> bytes:
    """Undo `update`: the file exactly as it was before the block was inserted."""
    lines = _lines(existing)
    found = _find_block(lines, path)
    if not found:
        return existing
    start, end = found
    rest = lines[end + 1:]
    if rest and not rest[0].strip():  # the blank line update put between the block and the user's lines
        rest = rest[1:]
    return b"".join(lines[:start] + rest)
