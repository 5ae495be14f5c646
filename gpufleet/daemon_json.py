"""Pure: /etc/docker/daemon.json — parse strictly, merge our keys in, diff by key, render."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from gpufleet.errors import InputError


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


def merge(current: dict, wanted: dict) -> dict:
    """Our keys set or replaced; `runtimes` merged per runtime; every other key kept, in order."""
    merged = dict(current)
    for key, value in wanted.items():
        if key == "runtimes" and isinstance(current.get("runtimes"), dict):
            merged["runtimes"] = {**current["runtimes"], **value}
        else:
            merged[key] = value
    return merged


def key_changes(old: dict, new: dict) -> list[str]:
    """Lines like `+ data-root: "/data"`, `~ registry-mirrors: [...] -> [...]`, `- key`."""
    dump = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True)  # noqa: E731
    lines = []
    for key in new:
        if key not in old:
            lines.append(f"+ {key}: {dump(new[key])}")
        elif old[key] != new[key]:
            lines.append(f"~ {key}: {dump(old[key])} -> {dump(new[key])}")
    lines += [f"- {key}" for key in old if key not in new]
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
    for key in ("live-restore", "debug", "ipv6"):
        if key in config and not isinstance(config[key], bool):
            problems.append(f"{key} must be true or false")
    if "default-runtime" in config and not isinstance(config["default-runtime"], str):
        problems.append("default-runtime must be a string")
    return problems
