"""Pure: the managed block in the workstation's ssh config.

The block goes above the first Host/Match line and below leading Include lines
(an Include before any Host is global), never inside a Host or Match section.
Everything outside the block is preserved byte for byte (CRLF, tabs, no final
newline, `key=value`, non-UTF-8 bytes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

BEGIN = "# BEGIN gpufleet managed block -- do not edit; `fab gen-ssh-config` rewrites it"
END = "# END gpufleet managed block"
_SECTION = re.compile(rb"^[ \t]*(host|match)([ \t]*=|[ \t]+)", re.IGNORECASE)
_INCLUDE = re.compile(rb"^[ \t]*include([ \t]*=|[ \t]+)", re.IGNORECASE)


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


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in " \t#") else value


def render_block(entries: list[SshHostEntry]) -> str:
    """The managed block, LF line endings, ending with a newline."""
    lines = [BEGIN]
    for e in entries:
        lines += ["", f"Host {e.alias}", f"    HostName {e.hostname}"]
        if e.port != 22:
            lines.append(f"    Port {e.port}")
        if e.user:
            lines.append(f"    User {e.user}")
        if e.identity_file:
            lines += [f"    IdentityFile {_quote(e.identity_file)}", "    IdentitiesOnly yes"]
        if e.proxy_jump:
            lines.append(f"    ProxyJump {e.proxy_jump}")
        if e.host_key_alias:
            lines.append(f"    HostKeyAlias {e.host_key_alias}")
        if e.known_hosts_file:
            lines += [f"    UserKnownHostsFile {_quote(e.known_hosts_file)}", "    StrictHostKeyChecking yes"]
        if e.forward_agent:
            lines.append("    ForwardAgent yes")
        lines += [f"    {k} {v}" for k, v in e.extra.items()]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _find_block(lines: list[bytes]) -> tuple[int, int] | None:
    start = next((i for i, l in enumerate(lines) if l.strip().startswith(BEGIN.encode()[:30])), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if lines[i].strip() == END.encode()), None)
    return (start, end) if end is not None else None


def update(existing: bytes, block: str) -> bytes:
    """`existing` with the managed block replaced, or inserted where it is safe."""
    lines = existing.splitlines(keepends=True)
    crlf = b"\r\n" in existing
    body = block.replace("\n", "\r\n").encode() if crlf else block.encode()
    eol = b"\r\n" if crlf else b"\n"
    found = _find_block(lines)
    if found:
        start, end = found
        return b"".join(lines[:start]) + body + b"".join(lines[end + 1:])
    first_section = next((i for i, l in enumerate(lines) if _SECTION.match(l)), None)
    if first_section is None:
        prefix = existing if not existing or existing.endswith((b"\n", b"\r")) else existing + eol
        return prefix + (eol if prefix.strip() else b"") + body
    # after leading Include lines (with the comments/blank lines among them), before anything else
    insert = 0
    for i in range(first_section):
        if _INCLUDE.match(lines[i]):
            insert = i + 1
    head = b"".join(lines[:insert])
    return head + body + eol + b"".join(lines[insert:])


def remove_block(existing: bytes) -> bytes:
    """Undo `update`: the file as it was before (plus a final newline if it had none)."""
    lines = existing.splitlines(keepends=True)
    found = _find_block(lines)
    if not found:
        return existing
    start, end = found
    head, rest = lines[:start], lines[end + 1:]
    if rest:  # inserted before a section: update added one blank line after the block
        if not rest[0].strip():
            rest = rest[1:]
    elif head and not head[-1].strip() and b"".join(head[:-1]).strip():  # appended after a blank line
        head = head[:-1]
    return b"".join(head + rest)
