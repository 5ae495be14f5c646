"""Pure: the managed block in the workstation's ssh config.

ssh takes the first value it finds for each option, reading an Include'd file
in place.  So the block goes first: at the very top of the file (below a leading
comment header that a blank line ends, which has no meaning to ssh), above every
Include, global option, Host and Match line.  Nothing the user wrote before or
after it, nor a file a tool Includes (OrbStack, Colima, Lima, `tsh config`, with
`Host *` + `User`, `StrictHostKeyChecking no` or `UserKnownHostsFile /dev/null`),
can override the HostName, Port, User, first IdentityFile, proxy or host-key
pinning of our aliases.

The block ends with `Host *`, so everything after it applies to every host as
before: a top-level Include line after `Host *` is read exactly as at the top of
the file (ssh restores the including section's state after an Include), and a
global option stays global.  Hosts of the user's own resolve as before.

A block found lower down (where older versions put it: below the leading
Includes) is moved to the top.  Where the block stood after a Host/Match section
of the user's and options followed it, a `Host *` line (MOVED_NOTE) is left in its
place so that those options stay global as they were.

Everything outside the block is preserved byte for byte (CRLF, tabs, no final
newline, `key=value`, non-UTF-8 bytes).
"""
from __future__ import annotations

import re
import shlex
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


def _meaningless(line: bytes) -> bool:
    """A blank or comment line: nothing to ssh."""
    return not line.strip() or line.lstrip().startswith(b"#")


def _insert_at(lines: list[bytes]) -> int:
    """The top: below a leading comment header that a blank line ends (a comment right above an Include
    belongs to that Include and stays with it), else line 0."""
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith(b"#"):
        i += 1
    if 0 < i < len(lines) and not lines[i].strip() and lines[i].endswith(b"\n"):
        return i + 1
    return 0


_SECTION_LINE = re.compile(rb"^[ \t]*(host|match)([ \t]*=|[ \t]+)(.*)$", re.IGNORECASE | re.DOTALL)


def _global_after(lines: list[bytes]) -> bool:
    """Whether a line after `lines` is read for every host: no Host/Match line yet, or the last is `Host *`."""
    last = next((m for m in map(_SECTION_LINE.match, reversed(lines)) if m), None)
    if last is None:
        return True
    words = last.group(3).decode("latin-1").split("#", 1)[0].split()
    return [w.lower() for w in words] in (["*"], ["all"])


MOVED_NOTE = ["# gpufleet moved its managed block to the top of this file; this line keeps what follows global",
              "Host *"]


def _without_block(lines: list[bytes], start: int, end: int, eol: bytes) -> list[bytes]:
    """`lines` less the block at start..end (and the blank line update() put after it); MOVED_NOTE in its
    place when the block ended a section of the user's and options follow that would otherwise join it."""
    before, after = lines[:start], lines[end + 1:]
    if after and not after[0].strip():
        after = after[1:]
    first = next((line for line in after if not _meaningless(line)), None)
    if first is not None and not _SECTION_LINE.match(first) and not _global_after(before):
        after = [line.encode() + eol for line in MOVED_NOTE] + after
    return before + after


def update(existing: bytes, block: str, path: str = "ssh config") -> bytes:
    """`existing` with the managed block at the top (see the module docstring): replaced where it already
    is at the top, moved there from anywhere else, inserted there when there is none.

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
        if all(_meaningless(line) for line in lines[:start]):
            return b"".join(lines[:start]) + body + b"".join(lines[end + 1:])
        lines = _without_block(lines, start, end, eol)
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


# --- sections of the user's that also match our aliases ---

# what our block sets for every alias: ssh keeps the first value, so the user's later lines lose for these
# (IdentityFile, CertificateFile, forwardings, SendEnv and SetEnv add up instead)
_OURS_FIRST = {"hostname", "port", "user", "identitiesonly", "proxyjump", "proxycommand", "hostkeyalias",
               "userknownhostsfile", "stricthostkeychecking", "forwardagent"}


def _glob(pattern: str, text: str, fold: bool = False) -> bool:
    """ssh's match_pattern: `*` any run, `?` one character, everything else literal."""
    if fold:
        pattern, text = pattern.lower(), text.lower()
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def host_line_matches(patterns: list[str], name: str) -> bool:
    """Pure: whether `Host PATTERNS` applies to `name` as ssh reads it: whitespace-separated patterns,
    case-sensitive, a matching `!pattern` excludes (a comma is a literal character here)."""
    matched = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if _glob(pattern[1:], name):
                return False
        elif _glob(pattern, name):
            matched = True
    return matched


def pattern_list_matches(patterns: str, name: str, fold: bool = True) -> bool | None:
    """Pure: ssh's match_pattern_list for a Match criterion: comma-separated, a matching `!pattern` excludes,
    case-insensitive for host names."""
    matched = False
    for pattern in patterns.split(","):
        if pattern.startswith("!"):
            if _glob(pattern[1:], name, fold):
                return False
        elif _glob(pattern, name, fold):
            matched = True
    return matched


def match_line_matches(words: list[str], entry: SshHostEntry) -> bool | None:
    """Pure: whether `Match WORDS` applies to our alias in ssh's first pass, our block having set HostName
    and User: True, False, or None when it hangs on what cannot be known here (exec, localuser, localnetwork,
    tagged, canonical, final)."""
    words = [part for word in words  # `host=x`: a criterion and its argument
             for part in (word.split("=", 1) if re.match(r"!?[A-Za-z]+=", word) else [word])]
    unknown, i = False, 0
    while i < len(words):
        word = words[i].lower()
        negate = word.startswith("!")
        word = word.lstrip("!")
        if word == "all":
            i += 1
            continue
        if word in ("canonical", "final"):
            unknown, i = True, i + 1
            continue
        if i + 1 >= len(words):
            return None
        argument, i = words[i + 1], i + 2
        if word == "host":
            result = pattern_list_matches(argument, entry.hostname)
        elif word == "originalhost":
            result = pattern_list_matches(argument, entry.alias)
        elif word == "user" and entry.user:
            result = pattern_list_matches(argument, entry.user, fold=False)
        else:
            unknown = True
            continue
        if result == negate:
            return False
    return None if unknown else True


def _words(rest: str) -> list[str] | None:
    """The arguments of a config line as ssh splits them (quotes, a `#` word ends the line); None if unbalanced."""
    try:
        return shlex.split(rest, comments=True)
    except ValueError:
        return None


def _section(line: str) -> tuple[str, list[str]] | None:
    """`Host a b` → ("host", ["a", "b"]); None for any other line (or one ssh would refuse)."""
    m = re.match(r"(?i)[ \t]*(host|match)(?:[ \t]*=[ \t]*|[ \t]+)(.*)", line)
    words = _words(m.group(2)) if m else None
    return (m.group(1).lower(), words) if words else None


def section_applies(line: str, entry: SshHostEntry) -> bool | None:
    """Pure: whether a Host or Match line of the user's, read after our block, applies to `entry`'s alias in
    ssh's first pass: True, False, or None when a Match criterion cannot be known here (exec, ...)."""
    section = _section(line)
    if section is None:
        return False
    keyword, words = section
    return host_line_matches(words, entry.alias) if keyword == "host" else match_line_matches(words, entry)


def for_every_host(line: str) -> bool:
    """Pure: a section of defaults for (nearly) every host: `Host *`, `Host * !x`, `Match all`."""
    section = _section(line)
    return section is not None and ("*" in section[1] if section[0] == "host"
                                    else all(w.lower() == "all" for w in section[1]))


def overlapping_sections(existing: bytes, entries: list[SshHostEntry], path: str = "ssh config") -> list[str]:
    """Pure: one warning per Host/Match line of the user's (outside our block) that also applies to a managed
    alias, naming the line, the aliases and which of its options still count for them (the others lose to
    the block, which ssh reads first).

    Sections of defaults for every host (for_every_host) are not reported; a Match criterion that cannot be
    evaluated here (exec, ...) makes it "may also match".  Only this file is read, not the files it Includes."""
    lines = _lines(existing)
    found = _find_block(lines, path)
    skip = range(found[0], found[1] + 1) if found else range(0)
    sections: list[tuple[int, str, list[str]]] = []  # (line number, the line, option keywords under it)
    for i, raw in enumerate(lines):
        if i in skip or _meaningless(raw):
            continue
        text = raw.decode("utf-8", errors="replace").strip()
        if _SECTION_LINE.match(raw):
            sections.append((i + 1, text, []))
        elif sections:
            sections[-1][2].append(re.split(r"[ \t=]", text, maxsplit=1)[0])
    warnings = []
    for number, text, options in sections:
        if for_every_host(text):
            continue
        results = {e.alias: section_applies(text, e) for e in entries}
        hits = [alias for alias, applies in results.items() if applies]
        maybe = [alias for alias, applies in results.items() if applies is None]
        if not hits and not maybe:
            continue
        named = ", ".join((hits + maybe)[:6]) + (" …" if len(hits + maybe) > 6 else "")
        seen: dict[str, str] = {}
        for option in options:
            seen.setdefault(option.lower(), option)
        lost = [o for k, o in seen.items() if k in _OURS_FIRST]
        kept = [o for k, o in seen.items() if k not in _OURS_FIRST]
        effect = "; ".join(part for part in (
            f"overridden for them by the managed block: {', '.join(lost)}" if lost else "",
            f"still applied to them: {', '.join(kept)}" if kept else "") if part)
        warnings.append(f"{path}:{number}: `{text}` {'also matches' if hits else 'may also match'} "
                        f"managed alias(es) {named}" + (f" ({effect})" if effect else ""))
    return warnings
