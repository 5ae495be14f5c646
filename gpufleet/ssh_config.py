"""Pure: the managed block in the workstation's ssh config.

ssh takes the first value it finds for each option, and a Host or Match line
scopes everything after it.  So the block goes at the top of the file (below a
leading comment header, such as a vim modeline, that a blank line ends): no
option or Include the user wrote above it can override our HostName, User or
host-key pinning.  The block ends with `Host *`, so the user's lines after it
apply to every host as before instead of only to our last alias.  Everything
outside the block is preserved byte for byte (CRLF, tabs, no final newline,
`key=value`, non-UTF-8 bytes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gpufleet.errors import InputError

BEGIN = "# BEGIN gpufleet managed block -- do not edit; `fab gen-ssh-config` rewrites it"
END = "# END gpufleet managed block"
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
    """After a leading comment header that a blank line ends (modelines, notes about the file), else 0."""
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith(b"#"):
        i += 1
    if 0 < i < len(lines) and not lines[i].strip():
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
