"""Pure: /etc/docker/daemon.json — parse strictly, merge our keys in (and drop the ones we set that the
inventory no longer lists), diff by key, render; and the record of which keys the tool set.

A key is named by its path: `("data-root",)`, or `("runtimes", "nvidia")` inside the tables whose entries
are owned one by one (NESTED): the tool owns the nvidia runtime, never the whole `runtimes` table.
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from gpufleet.errors import InputError
from gpufleet.records import record_member


class DaemonJsonError(InputError):
    """The existing daemon.json is not valid JSON; it is reported and left alone."""


def _object(path: str):
    def build(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:  # json keeps the last silently; rewriting would drop the other value
                raise DaemonJsonError(f"{path}: key {key!r} appears twice; the file was left untouched")
            seen.add(key)
        return dict(pairs)
    return build


def _constant(path: str):
    def refuse(name):
        raise DaemonJsonError(f"{path}: {name} is not JSON (dockerd refuses it); the file was left untouched")
    return refuse


def parse(text: str, path: str = "/etc/docker/daemon.json") -> dict:
    """Strict JSON object, or {} for an empty file; never "repairs" comments, trailing commas, duplicate keys
    or NaN (dockerd refuses the first two; we would silently lose data on the others)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text, object_pairs_hook=_object(path), parse_constant=_constant(path))
    except json.JSONDecodeError as e:
        raise DaemonJsonError(f"{path}: line {e.lineno} column {e.colno}: {e.msg}; "
                              "the file is not valid JSON and was left untouched") from None
    if not isinstance(value, dict):
        raise DaemonJsonError(f"{path}: the top level is {type(value).__name__}, not an object; left untouched")
    return value


# tables whose entries have owners of their own: another runtime someone registered is theirs, and so is
# a feature flag the tool does not set (nvidia-ctk's `cdi`)
NESTED = ("runtimes", "features")
KeyPath = tuple  # ("data-root",) or ("runtimes", "nvidia")


def owned_keys(wanted: dict) -> list[KeyPath]:
    """The key paths that `wanted` sets, sorted: top-level keys, and one path per entry of a NESTED table."""
    paths = []
    for key, value in wanted.items():
        if key in NESTED and isinstance(value, dict):
            paths += [(key, name) for name in value]
        else:
            paths.append((key,))
    return sorted(paths)


def merge(current: dict, wanted: dict, owned_before=()) -> dict:
    """Our keys set or replaced; the keys in `owned_before` (set by us earlier) that `wanted` no longer
    has removed, a NESTED table only when that leaves it empty; every other key kept, in order."""
    merged = dict(current)
    still = set(owned_keys(wanted))
    for path in owned_before:
        path = tuple(path)
        if path in still:
            continue
        if len(path) == 1:
            merged.pop(path[0], None)
        elif isinstance(merged.get(path[0]), dict) and path[1] in merged[path[0]]:
            table = {k: v for k, v in merged[path[0]].items() if k != path[1]}
            if table:
                merged[path[0]] = table
            else:
                del merged[path[0]]
    for key, value in wanted.items():
        if key in NESTED and isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _flatten(config: dict) -> dict:
    """{path: value}, NESTED tables one path per entry (an empty or non-object one stays whole)."""
    flat = {}
    for key, value in config.items():
        if key in NESTED and isinstance(value, dict) and value:
            flat.update({(key, name): entry for name, entry in value.items()})
        else:
            flat[(key,)] = value
    return flat


def changed_keys(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(keys set or changed, keys removed), as dotted names (`runtimes.nvidia`)."""
    o, n = _flatten(old), _flatten(new)
    return ([".".join(p) for p in n if p not in o or o[p] != n[p]], [".".join(p) for p in o if p not in n])


def key_changes(old: dict, new: dict) -> list[str]:
    """Lines like `+ data-root: "/data"`, `~ registry-mirrors: [...] -> [...]`, `- debug: true`;
    entries of NESTED tables one by one (`- runtimes.nvidia: {...}`)."""
    dump = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True)  # noqa: E731
    o, n = _flatten(old), _flatten(new)
    lines = []
    for path, value in n.items():
        if path not in o:
            lines.append(f"+ {'.'.join(path)}: {dump(value)}")
        elif o[path] != value:
            lines.append(f"~ {'.'.join(path)}: {dump(o[path])} -> {dump(value)}")
    lines += [f"- {'.'.join(path)}: {dump(value)}" for path, value in o.items() if path not in n]
    return lines


def render(config: dict) -> str:
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def check_schema(config: dict) -> list[str]:
    """Type checks of the keys we know; an empty list means fine."""
    problems = []
    root = config.get("data-root")
    if root is not None and not (isinstance(root, str) and root.startswith("/")):
        problems.append(f"data-root must be an absolute path, not {root!r}")
    mirrors = config.get("registry-mirrors")
    if mirrors is not None:
        if not isinstance(mirrors, list):
            problems.append("registry-mirrors must be a list")
        else:
            for m in mirrors:
                if not isinstance(m, str) or urlsplit(m).scheme not in ("http", "https") or not urlsplit(m).hostname:
                    problems.append(f"registry mirror {m!r} is not an http(s) URL")
    runtimes = config.get("runtimes")
    if runtimes is not None:
        if not isinstance(runtimes, dict):
            problems.append("runtimes must be an object")
        else:
            for name, runtime in runtimes.items():
                if not isinstance(runtime, dict) or not isinstance(runtime.get("path"), str):
                    problems.append(f"runtimes.{name} needs a string 'path'")
                elif not isinstance(runtime.get("runtimeArgs", runtime.get("args", [])), list):
                    problems.append(f"runtimes.{name} args must be a list")
    features = config.get("features")
    if features is not None:
        if not isinstance(features, dict):
            problems.append("features must be an object")
        else:
            problems += [f"features.{name} must be true or false" for name, on in features.items()
                         if not isinstance(on, bool)]
    for key in ("live-restore", "debug", "ipv6"):
        if key in config and not isinstance(config[key], bool):
            problems.append(f"{key} must be true or false")
    if "default-runtime" in config and not isinstance(config["default-runtime"], str):
        problems.append("default-runtime must be a string")
    return problems


# --- the record of the keys the tool set (a file of its own on the host) ---

OWNED_ABOUT = ("keys of /etc/docker/daemon.json that gpufleet set; it removes them when the inventory no "
               "longer lists them (other keys are never touched)")


def render_owned(paths) -> str:
    """The record file: one key path per line, as a JSON list of names."""
    body = ",\n".join(f"    {json.dumps(list(p), ensure_ascii=False)}" for p in sorted(tuple(p) for p in paths))
    return (f'{{\n  "about": {json.dumps(OWNED_ABOUT)},\n  "keys": [' + (f"\n{body}\n  " if body else "")
            + "]\n}\n")


def parse_owned(text: str, path: str) -> list[KeyPath]:
    """The key paths in a record file; anything but what render_owned writes is refused in one line."""
    left = ("; it was left untouched, and so was daemon.json (remove it to start over: the keys it "
            "listed are then treated as set by hand)")
    paths = []
    for entry in record_member(text, path, "keys", list, left):
        if not (isinstance(entry, list) and all(isinstance(k, str) and k for k in entry)
                and (len(entry) == 1 or (len(entry) == 2 and entry[0] in NESTED))):
            raise InputError(f"{path}: key {json.dumps(entry)} is not a daemon.json key path{left}")
        paths.append(tuple(entry))
    return sorted(set(paths))
