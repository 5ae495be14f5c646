"""Pure: OpenSSH authorized_keys — parse, validate keys, and sync the managed keys in."""
from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass, field

from gpufleet.errors import InputError
from gpufleet.records import record_member

KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


@dataclass(frozen=True)
class PublicKey:
    keytype: str
    blob: str
    comment: str = ""
    options: str = ""

    @property
    def identity(self) -> tuple[str, str]:
        """Two lines hold the same key when type and blob match (options and comment aside)."""
        return (self.keytype, self.blob)

    def line(self) -> str:
        parts = [self.options] if self.options else []
        return " ".join(parts + [self.keytype, self.blob] + ([self.comment] if self.comment else []))


class BadPublicKey(InputError):
    """A malformed public key."""


def _split_options(line: str) -> tuple[str, str]:
    """(options, rest) where options may contain quoted spaces and commas."""
    i, quoted = 0, False
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quoted:
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch in " \t" and not quoted:
            break
        i += 1
    return line[:i], line[i:].strip()


def _check_blob(keytype: str, blob: str) -> str | None:
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "key blob is not valid base64"
    if len(raw) < 4:
        return "key blob is truncated"
    (n,) = struct.unpack(">I", raw[:4])
    inner = raw[4:4 + n].decode("ascii", "replace")
    if len(raw) < 4 + n or inner != keytype:
        return f"key blob says {inner!r}, the line says {keytype!r}"
    return None


def parse_line(line: str) -> tuple[PublicKey | None, str | None]:
    """(key, None) for a key line, (None, None) for a blank/comment line, (None, reason) when invalid."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None, None
    if "PRIVATE KEY-----" in text:
        return None, "this is a private key, not a public key (use the .pub file)"
    if text.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        return None, "an RFC 4716 (SSH2/PuTTY) key; convert it with `ssh-keygen -i -f FILE`"
    options = ""
    first = text.split(None, 1)[0]
    if first not in KEY_TYPES:
        if first.startswith("AAAA"):  # every key blob starts so: the type in front of it is missing
            return None, "a key blob without its key type (like ssh-ed25519) in front"
        options, text = _split_options(text)
        if not text:
            return None, f"no key after {options[:30]!r}"
        second = text.split(None, 1)[0]
        if second not in KEY_TYPES:
            # `restrict,command="..." ssh-foo AAAA`: the options are fine, the type is not;
            # `ssh-ed2519 AAAA` or a BOM before the type: the first word is the type, and it is wrong
            options_like = re.match(r'^[A-Za-z0-9-]+(="|,|$)', options) and not options.startswith(KEY_PREFIXES)
            return None, f"unknown key type {(second if options_like else first)[:40]!r}"
    parts = text.split(None, 2)
    if len(parts) < 2:
        return None, "a key type without a key"
    keytype, blob = parts[0], parts[1]
    if keytype not in KEY_TYPES:
        return None, f"unknown key type {keytype[:40]!r}"
    problem = _check_blob(keytype, blob)
    if problem:
        return None, problem
    return PublicKey(keytype, blob, parts[2] if len(parts) > 2 else "", options), None


def parse_public_key(line: str, source: str = "public key") -> PublicKey:
    """One public key the inventory distributes; InputError naming `source` when malformed."""
    key, problem = parse_line(line)
    if key is None:
        raise BadPublicKey(f"{source}: {problem or 'empty line, not a key'}")
    return key


@dataclass
class SyncResult:
    text: str
    added: list[PublicKey] = field(default_factory=list)
    removed: list[PublicKey] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    remaining: int = 0  # valid keys left in the file


def sync(existing: str, add: list[PublicKey], revoke: list[PublicKey]) -> SyncResult:
    """Revoked keys removed wherever they are, wanted keys appended once, everything else kept."""
    newline = "\r\n" if "\r\n" in existing else "\n"
    revoked = {k.identity for k in revoke}
    lines = existing.split("\n")  # sshd splits on \n only (str.splitlines would also split on \x0c, \u2028...)
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    kept, seen, result = [], set(), SyncResult("")
    for number, line in enumerate(lines, 1):
        key, problem = parse_line(line)
        if problem:
            result.problems.append(f"{number}: {problem}")
        if key is not None and key.identity in revoked:
            result.removed.append(key)
            continue
        if key is not None:
            seen.add(key.identity)
            result.remaining += 1
        kept.append(line)
    for key in add:
        if key.identity not in seen:
            if kept and not kept[-1].endswith("\n"):  # only when a key goes after it: no change for nothing
                kept[-1] += newline
            kept.append(key.line() + newline)
            seen.add(key.identity)
            result.added.append(key)
            result.remaining += 1
    result.text = "".join(kept)
    return result


# --- people's keys: which keys gpufleet put in which container for its users ---

def container_keys(admins: list[PublicKey], users: list[PublicKey], revoke: list[PublicKey],
                   recorded: list[PublicKey]) -> tuple[list[PublicKey], list[PublicKey]]:
    """Pure: (keys to add, keys to remove) for a container: the admins' and its users' keys in; revoked keys
    out, and so is a person's key the tool put there earlier (`recorded`) that neither list wants now.
    Every other line of the file stays, as sync() keeps it."""
    wanted = admins + users
    keep = {k.identity for k in wanted}
    return wanted, revoke + [k for k in recorded if k.identity not in keep]


PEOPLE_RECORD_ABOUT = ("the keys of [people.NAME] that gpufleet put in each container's authorized_keys; "
                       "one that leaves the inventory is removed there")


def render_people_record(containers: dict[str, list[PublicKey]]) -> str:
    """The record file: container name -> the "type blob" of each person's key the tool installed there."""
    body = {name: sorted({f"{k.keytype} {k.blob}" for k in keys}) for name, keys in sorted(containers.items()) if keys}
    return json.dumps({"about": PEOPLE_RECORD_ABOUT, "containers": body}, indent=2) + "\n"


def parse_people_record(text: str, path: str) -> dict[str, list[PublicKey]]:
    """What render_people_record wrote; anything else is refused in one line (nothing is removed then)."""
    left = "; left untouched (remove it to start over: the keys it listed are then kept like keys added by hand)"
    containers = record_member(text, path, "containers", dict, left)
    out = {}
    for name, lines in containers.items():
        if not isinstance(lines, list):
            raise InputError(f"{path}: containers.{name} is not a list of keys{left}")
        keys = []
        for line in lines:
            key, problem = parse_line(line) if isinstance(line, str) else (None, "not a string")
            if key is None or key.options or key.comment:
                raise InputError(f"{path}: containers.{name}: {str(line)[:40]!r} is not a key type and blob{left}")
            keys.append(key)
        out[name] = keys
    return out
