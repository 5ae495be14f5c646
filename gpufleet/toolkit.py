"""The NVIDIA Container Toolkit's packages, installed at one version (`nvidia_toolkit_version`).

The toolkit (1.18+) requires its packages and libnvidia-container's at exactly one version; apt
left to itself can pair a new nvidia-container-toolkit with an older -base.  Every package of
TOOLKIT_PACKAGES that the mirror has at the chosen version is installed as PKG=VERSION, in one
apt transaction.
"""
from __future__ import annotations

from dataclasses import dataclass

from gpufleet.errors import FleetError
from gpufleet.facts import TOOLKIT_PACKAGES

MAIN = TOOLKIT_PACKAGES[0]


def matches(version: str, wanted: str) -> bool:
    """Pure: a Debian version is the wanted one: exactly, or by its upstream part ('1.18.0' is '1.18.0-1')."""
    return version == wanted or version.startswith(wanted + "-") or version.startswith(wanted + "~")


def resolve(wanted: str, available: dict[str, list[str]]) -> str:
    """Pure: the toolkit version to install: `wanted` (nvidia_toolkit_version) as the mirror has it, or
    its newest where `wanted` is "".  FleetError naming what the mirror has where it lacks it."""
    versions = available.get(MAIN) or []
    if not versions:
        raise FleetError(f"the apt lists have no {MAIN} (is the NVIDIA repository reachable?)")
    if not wanted:
        return versions[0]
    for version in versions:
        if matches(version, wanted):
            return version
    raise FleetError(f"nvidia_toolkit_version = {wanted!r}, but the mirror has {MAIN} {', '.join(versions)}")


def pins(version: str, available: dict[str, list[str]]) -> list[str]:
    """Pure: PKG=VERSION for each toolkit package the mirror has at `version` (a mirror without
    libnvidia-container's packages, as the lab's, gets the toolkit's own)."""
    return [f"{package}={version}" for package in TOOLKIT_PACKAGES if version in (available.get(package) or [])]


@dataclass(frozen=True)
class ToolkitState:
    """What the plan found: "" where the toolkit is at the version wanted, else why it is (re)installed."""
    change: str
    version: str = ""  # the version to install, "" where it is known only after apt-get update


def plan(wanted: str, installed: dict[str, str], available: dict[str, list[str]], lists_current: bool) -> ToolkitState:
    """Pure: whether the toolkit's packages are as `nvidia_toolkit_version` wants them.

    `installed` is dpkg's {package: version}; `available` what `apt-cache madison` lists; `lists_current`
    whether those lists already read the NVIDIA repository as it is configured (false where its sources
    are being written now: the version is then resolved after apt-get update)."""
    have = installed.get(MAIN, "")
    what = f"the version nvidia_toolkit_version = {wanted!r} names" if wanted else "the newest the mirror has"
    if lists_current and not available.get(MAIN) and have and (not wanted or matches(have, wanted)):
        return ToolkitState("", have)  # lists without the repository (emptied): nothing newer is known
    if not lists_current or not available.get(MAIN):
        return ToolkitState(f"install {', '.join(TOOLKIT_PACKAGES)} (those the mirror has) at one version: "
                            f"{what}, read after apt-get update")
    target = resolve(wanted, available)
    wanted_pins = pins(target, available)
    off = [pin.split("=", 1)[0] for pin in wanted_pins if installed.get(pin.split("=", 1)[0]) != target]
    if not off:
        return ToolkitState("", target)
    if not have:
        why = "not installed"
    elif have != target:
        why = f"{have} installed"
    else:
        why = ", ".join(f"{p} {installed[p]}" if p in installed else f"no {p}" for p in off)
    return ToolkitState(f"install {', '.join(wanted_pins)} ({why}; {what})", target)
