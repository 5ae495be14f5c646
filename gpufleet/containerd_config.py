"""Pure: where Docker keeps its images, and containerd's /etc/containerd/config.toml.

With the containerd image store (`docker info`: DriverStatus `driver-type` =
`io.containerd.snapshotter.v1`, Docker 29's default on a fresh install), images and layers live
under the root of the containerd that dockerd talks to: its own (under data-root) or, with
docker-ce's packaging, the system's `containerd.service` (root `/var/lib/containerd` unless its
config.toml says otherwise).  The tool owns one key of that file, the top-level `root`, on a line
it marks as its own; every other byte is kept.
"""
from __future__ import annotations

import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04's)
    import tomli as tomllib
from dataclasses import dataclass

from gpufleet.errors import InputError

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_DEFAULT_ROOT = "/var/lib/containerd"
SNAPSHOTTER_DRIVER = "io.containerd.snapshotter.v1"
MARK = "# set by gpufleet from data_root"
# dockerd's own containerd (no --containerd) listens under its exec-root and keeps its root under data-root
MANAGED_SOCKET = re.compile(r"^(/var)?/run/docker/containerd/")
_ROOT_LINE = re.compile(r"^\s*root\s*=")
_TABLE_LINE = re.compile(r"^\s*\[")
_LOG_LINE = re.compile(r'^time="[^"]*" level=')


@dataclass(frozen=True)
class ImageStore:
    """Which store the running engine uses, and which containerd it talks to."""
    kind: str  # "containerd" or "classic"
    containerd_address: str  # "" where docker info does not say (Docker < 27)
    system_containerd: bool  # a containerd of its own service, not one dockerd started

    def images_path(self, docker_root: str, containerd_root: str) -> str:
        """Where the images and layers really are."""
        if self.kind != "containerd":
            return docker_root
        return containerd_root if self.system_containerd else f"{docker_root.rstrip('/')}/containerd/daemon"


def image_store(info: dict) -> ImageStore:
    """Pure: the image store of a running engine, from its `docker info` JSON."""
    status = dict(pair for pair in info.get("DriverStatus") or [] if isinstance(pair, list) and len(pair) == 2)
    kind = "containerd" if status.get("driver-type") == SNAPSHOTTER_DRIVER else "classic"
    address = ((info.get("Containerd") or {}).get("Address") or "")
    # Docker < 27 does not say: its packages (docker-ce, Debian's docker.io) run it with the system's containerd
    return ImageStore(kind, address, not MANAGED_SOCKET.match(address))


def parse(text: str, path: str = CONTAINERD_CONFIG) -> dict:
    """The TOML of config.toml; a file that does not parse is reported in one line and left alone."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: {e}; the file is not valid TOML and was left untouched") from None


def parse_dump_root(rc: int, out: str) -> str:
    """Pure: the root of `containerd config dump` (the config containerd reads, imports merged),
    or "" where it did not run (no containerd, or a config it refuses)."""
    if rc != 0:
        return ""
    # the probe reads stderr too: containerd's own log lines (a deprecated config version, a migration)
    toml = "\n".join(line for line in out.splitlines() if not _LOG_LINE.match(line))
    try:
        root = tomllib.loads(toml).get("root", "")
    except tomllib.TOMLDecodeError:
        return ""
    return root if isinstance(root, str) else ""


def configured_root(text: str, path: str = CONTAINERD_CONFIG) -> str:
    """The root config.toml sets, or containerd's default."""
    root = parse(text, path).get("root") if text.strip() else None
    return root if isinstance(root, str) and root else CONTAINERD_DEFAULT_ROOT


def _top_level_end(lines: list[str]) -> int:
    """The index of the first table header: top-level keys go before it."""
    in_multiline = False
    for i, line in enumerate(lines):
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_multiline = not in_multiline
        if not in_multiline and _TABLE_LINE.match(line):
            return i
    return len(lines)


def set_root(text: str, root: str | None, path: str = CONTAINERD_CONFIG) -> str:
    """config.toml with containerd's `root` set to `root` on the tool's own line (None: the tool's
    line removed, back to what the file says without it); every other line kept as it is.

    A top-level `root = ...` someone else wrote is replaced by the tool's line when `root` is given
    (the tool owns the key it sets) and kept when it is None."""
    old = parse(text, path)
    lines = text.splitlines(keepends=True)
    end = _top_level_end(lines)
    ours = [i for i in range(end) if _ROOT_LINE.match(lines[i]) and MARK in lines[i]]
    theirs = [i for i in range(end) if _ROOT_LINE.match(lines[i]) and MARK not in lines[i]]
    new_line = f'root = "{_toml_string(root)}"  {MARK}\n' if root else None
    if (not ours and new_line is None) or ([lines[i] for i in ours + theirs] == [new_line]):
        return text
    if new_line is None:
        for i in reversed(ours):
            del lines[i]
    elif ours or theirs:
        first = (ours or theirs)[0]
        lines[first] = new_line
        for i in reversed([i for i in ours + theirs if i != first]):
            del lines[i]
    else:
        while end and not lines[end - 1].strip() and end < len(lines):  # before the blank lines above a table
            end -= 1
        if end and not lines[end - 1].endswith("\n"):
            lines[end - 1] += "\n"
        lines.insert(end, new_line)
    new = "".join(lines)
    checked = parse(new, path)
    if root and checked.get("root") != root:
        raise InputError(f"{path}: containerd's root would read {checked.get('root')!r}, not {root!r}; "
                         "the file was left untouched")
    if {k: v for k, v in checked.items() if k != "root"} != {k: v for k, v in old.items() if k != "root"}:
        raise InputError(f"{path}: setting root would change other keys; the file was left untouched")
    return new


def _toml_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
