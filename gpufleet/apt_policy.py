"""Pure: `apt-cache policy PACKAGE` (run with LC_ALL=C) → what is installed, the candidate, and where each version comes from."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_VERSION = re.compile(r"^ (\*\*\*| {3}) (\S+) (-?\d+)$")
_ORIGIN = re.compile(r"^ {8}(-?\d+) (\S+)(?: (\S+))?")


@dataclass(frozen=True)
class AptPolicy:
    """One package as apt sees it: installed and candidate version ("" for none), and the version table,
    newest first as apt prints it: (version, [the URIs that serve it; /var/lib/dpkg/status for the installed])."""
    package: str = ""
    installed: str = ""
    candidate: str = ""
    versions: list[tuple[str, list[str]]] = field(default_factory=list)

    def served_by(self, version: str) -> list[str]:
        return next((uris for v, uris in self.versions if v == version), [])


def parse_policy(text: str) -> AptPolicy:
    """Pure: the first package of `apt-cache policy` output; an empty AptPolicy where apt knows no such package."""
    package, installed, candidate, versions = "", "", "", []
    for line in text.splitlines():
        if not package:
            if re.match(r"^\S+:$", line):
                package = line[:-1]
            continue
        if re.match(r"^\S", line):  # the next package
            break
        stripped = line.strip()
        if stripped.startswith("Installed:"):
            installed = stripped.partition(":")[2].strip()
        elif stripped.startswith("Candidate:"):
            candidate = stripped.partition(":")[2].strip()
        elif m := _VERSION.match(line):
            versions.append((m.group(2), []))
        elif (m := _ORIGIN.match(line)) and versions:
            versions[-1][1].append(m.group(2))
    none = ("", "(none)")
    return AptPolicy(package, "" if installed in none else installed, "" if candidate in none else candidate,
                     versions)
