"""The JSON records the tool keeps on a server beside what it owns (the daemon.json keys it set, the keys
it put into each container, the GPUs each container holds): read back strictly, since a record that is not
what the tool wrote must never make it remove or move something."""
from __future__ import annotations

import json

from gpufleet.errors import InputError


def record_member(text: str, path: str, key: str, kind: type, left: str) -> dict | list:
    """Pure: the `key` member (a dict or a list, as `kind` says) of a record the tool wrote at `path`;
    anything else is refused in one line naming the file, with `left` saying what was left alone."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno} column {e.colno}: {e.msg}{left}") from None
    member = value.get(key) if isinstance(value, dict) else None
    if not isinstance(member, kind):
        shape = "table" if kind is dict else "list"
        raise InputError(f"{path}: not a record gpufleet wrote (no \"{key}\" {shape}){left}")
    return member
