"""Signed apt repositories (Docker's, NVIDIA's, or a mirror of them), with pinned signing keys.

One primitive for both: the key is fetched on the host with curl to stdout (nothing is
written), its primary-key fingerprint (gpufleet.openpgp) is compared with the pin, and
only then is the keyring written, 0644 under /etc/apt/keyrings, through the one file
writer, followed by the sources list that names it in `signed-by` (never `apt-key`).
A keyring already on the host that is not the pinned key is fetched again.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from gpufleet import openpgp
from gpufleet.errors import FleetError
from gpufleet.facts import ABSENT, HostFacts, RemoteFile
from gpufleet.files import FileChange, apply_file, file_action, render_template
from gpufleet.paths import DOCKER_KEYRING, DOCKER_SOURCES, NVIDIA_KEYRING, NVIDIA_SOURCES
from gpufleet.plan import Action
from gpufleet.remote import Script

FETCH_TOOLS = ("curl", "ca-certificates")


@dataclass(frozen=True)
class SignedRepo:
    """An apt repository, the key that must sign it, and where both go on the host."""
    name: str                 # in messages: "Docker's signing key"
    base_url: str             # the repository or its mirror
    key_url: str
    fingerprint: str          # the pin: 40 upper-case hex digits
    fingerprint_setting: str  # the inventory key that holds the pin
    keyring: str
    sources_path: str
    sources: bytes

    @property
    def keyrings_dir(self) -> str:
        return str(PurePosixPath(self.keyring).parent)


def docker_ce_repo(mirror: str, fingerprint: str, family: str, codename: str, arch: str,
                   keyring: str = DOCKER_KEYRING, sources_path: str = DOCKER_SOURCES) -> SignedRepo:
    """Docker's docker-ce repository at `mirror` (download.docker.com/linux or a mirror of it)."""
    sources = render_template("docker.list.j2", arch=arch, keyring=keyring, mirror=mirror, family=family,
                              codename=codename)
    return SignedRepo("Docker", mirror, f"{mirror}/{family}/gpg", fingerprint, "docker_key_fingerprint",
                      keyring, sources_path, sources.encode())


def nvidia_toolkit_repo(mirror: str, fingerprint: str, keyring: str = NVIDIA_KEYRING,
                        sources_path: str = NVIDIA_SOURCES) -> SignedRepo:
    """NVIDIA's libnvidia-container repository (the Container Toolkit) at `mirror`."""
    sources = render_template("nvidia-container-toolkit.list.j2", keyring=keyring, mirror=mirror)
    return SignedRepo("NVIDIA", mirror, f"{mirror}/gpgkey", fingerprint, "nvidia_key_fingerprint",
                      keyring, sources_path, sources.encode())


def key_problem(repo: SignedRepo, data: bytes) -> str:
    """Why `data` is not exactly the pinned key ("" when it is)."""
    try:
        found = openpgp.primary_fingerprints(data)
    except openpgp.OpenPGPError as e:
        return f"is not a usable OpenPGP public key: {e}"
    if found != [repo.fingerprint]:
        return f"is {', '.join(found)}, not the pinned {repo.fingerprint}"
    return ""


def check_key(repo: SignedRepo, data: bytes) -> None:
    """Refuse (FleetError) a fetched key that is not the pinned one; the message names URL, setting and both keys."""
    try:
        found = openpgp.primary_fingerprints(data)
    except openpgp.OpenPGPError as e:
        raise FleetError(f"{repo.name}'s signing key from {repo.key_url} is not a usable OpenPGP public key ({e}); "
                         f"refused, nothing was written") from None
    if found != [repo.fingerprint]:
        received = ", ".join(found) if len(found) == 1 else f"{len(found)} keys: {', '.join(found)}"
        raise FleetError(
            f"{repo.name}'s signing key from {repo.key_url} does not match {repo.fingerprint_setting}: expected "
            f"{repo.fingerprint}, received {received}; refused, nothing was written (if the publisher really changed "
            f"its key, set {repo.fingerprint_setting} to the new published fingerprint)")


def repo_actions(repo: SignedRepo, facts: HostFacts) -> tuple[list[Action], bool]:
    """(actions that make the keyring and sources list right, whether the sources list changes)."""
    actions = []
    keyring = facts.files.get(repo.keyring, ABSENT)
    why = "" if not keyring.exists else key_problem(repo, keyring.content)
    if not keyring.exists or why:
        missing = [p for p in FETCH_TOOLS if p not in facts.packages]
        if missing:
            actions.append(Action(f"install {' '.join(missing)} (to fetch signing keys)",
                                  lambda c: c.run(apt_install(missing), sudo=True, kind="install")))
        summary = (f"fetch {repo.name}'s signing key from {repo.key_url}, check it is {repo.fingerprint} "
                   f"({repo.fingerprint_setting}), write {repo.keyring}")
        if why:
            summary = f"re-{summary} (the keyring on the host {why})"
        actions.append(Action(summary, lambda c: install_key(c, repo, keyring)))
    else:
        permissions = FileChange(repo.keyring, keyring, keyring.content)
        if permissions.needed:
            actions.append(file_action(permissions))
    sources = FileChange(repo.sources_path, facts.files.get(repo.sources_path, ABSENT), repo.sources)
    if sources.needed:
        actions.append(file_action(sources))
    return actions, sources.content_changed


def plan_repo_packages(repo: SignedRepo, facts: HostFacts, packages, conflicts=()) -> list[Action]:
    """Key, sources list and `packages` from `repo`; installed `conflicts` are removed first.

    Empty when all is in place.  The packages are (re)installed when one is missing or the
    sources list changed (a new mirror).
    """
    actions, sources_changed = repo_actions(repo, facts)
    missing = [p for p in packages if p not in facts.packages]
    if missing or sources_changed:
        conflicting = [p for p in conflicts if p in facts.packages]
        if conflicting:
            actions.append(Action(f"remove {', '.join(conflicting)}, which conflict with {packages[0]}",
                                  lambda c: c.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y",
                                                   "-o", "DPkg::Lock::Timeout=300", "remove", "--", *conflicting],
                                                  sudo=True)))
        wanted = missing or list(packages)
        actions.append(Action(f"install {' '.join(wanted)} from {repo.base_url}",
                              lambda c: c.run(apt_install(wanted), sudo=True, kind="install")))
    return actions


def fetch_key(c, repo: SignedRepo) -> bytes:
    """The key as served, fetched on the host to stdout (nothing is written); FleetError when curl fails."""
    argv = ["curl", "-fsSL", "--retry", "3", "--connect-timeout", "15", "--max-time", "120", repo.key_url]
    result = c.run(argv, check=False, timeout=400)
    if result.exit_code != 0:
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [f"exit {result.exit_code}"]
        raise FleetError(f"cannot fetch {repo.name}'s signing key from {repo.key_url} ({repo.fingerprint_setting}): "
                         f"curl: {said[0][-200:]}")
    return result.stdout.encode()


def install_key(c, repo: SignedRepo, current: RemoteFile) -> None:
    """Fetch the key, refuse it unless it is the pinned one, then write the keyring (0644; the writer
    makes a missing /etc/apt/keyrings 0755)."""
    data = fetch_key(c, repo)
    check_key(repo, data)
    apply_file(c.session, FileChange(repo.keyring, current, data, mode="0644"))


# An install cut short (a host that went down mid-run) leaves dpkg half-configured; after a Ctrl-C
# the remote apt may still run (sshd does not hang up a command without a tty), and dpkg's own
# `--configure -a` does not wait for its lock as apt does: then it is tried again for 5 minutes.
CONFIGURE_WHEN_FREE = ("configure_when_free() { n=0; until said=$(LC_ALL=C dpkg --configure -a 2>&1); do "
                       'case "$said" in *"locked by another process"*) ;; *) echo "$said" >&2; return 1;; esac; '
                       '[ $((n += 1)) -lt 60 ] || { echo "$said" >&2; return 1; }; sleep 5; done; '
                       'printf \'%s\\n\' "$said"; }')


def apt_install(packages, update: bool = True, recommends: bool = True, downgrades: bool = False) -> Script:
    """Install packages non-interactively, waiting for another apt or dpkg to finish; `downgrades` lets
    PKG=VERSION pins go below what is installed."""
    lines = ["set -e", "export DEBIAN_FRONTEND=noninteractive", CONFIGURE_WHEN_FREE,
             "dpkg --configure -a 2>/dev/null || configure_when_free"]
    if update:
        lines.append("apt-get -q -o DPkg::Lock::Timeout=300 update")
    lines.append("apt-get -q -y -o DPkg::Lock::Timeout=300 install " + ("" if recommends else "--no-install-recommends ")
                 + ("--allow-downgrades " if downgrades else "")
                 + "-- " + " ".join(shlex.quote(p) for p in packages))
    return Script("\n".join(lines))
