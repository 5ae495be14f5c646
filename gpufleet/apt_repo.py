"""Signed apt repositories (Docker's, NVIDIA's, or a mirror of them), with pinned signing keys.

One primitive for both: the key is fetched on the host with curl to stdout (nothing is
written), its primary-key fingerprint (gpufleet.openpgp) is compared with the pin, and
only then is the keyring written, 0644 under /etc/apt/keyrings, through the one file
writer, followed by the deb822 `.sources` file that names it in `Signed-By` (never `apt-key`).
A keyring already on the host that is not the pinned key is fetched again.

Every supported release's apt (1.6 on Ubuntu 18.04 and later) reads deb822 sources with
Signed-By, so the repositories are written that way everywhere, as Docker's install guide
does.  A file of the same folder that names the same repository (the one-line
docker.list or nvidia-container-toolkit.list of an earlier run, of the user, of the guides)
is replaced, not kept beside it: apt warns about sources configured twice, and a second
Signed-By for one URI is an error.  It is renamed to *.gpufleet.bak, which apt ignores.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from gpufleet import openpgp
from gpufleet.apt_sources import mirrors_in
from gpufleet.errors import FleetError
from gpufleet.facts import ABSENT, HostFacts, RemoteFile
from gpufleet.files import FileChange, apply_file, file_action, render_template, unified_diff
from gpufleet.local_files import BACKUP_SUFFIX
from gpufleet.paths import DOCKER_KEYRING, DOCKER_SOURCES, NVIDIA_KEYRING, NVIDIA_SOURCES
from gpufleet.plan import Action
from gpufleet.remote import Script

FETCH_TOOLS = ("curl", "ca-certificates")
DOCKER_UPSTREAM = "https://download.docker.com/linux"
NVIDIA_UPSTREAM = "https://nvidia.github.io/libnvidia-container"


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
    uris: tuple[str, ...] = ()      # where this repository is served: the mirror, the publisher
    old_paths: tuple[str, ...] = ()  # its one-line files of earlier runs and the guides: replaced whatever they say

    @property
    def keyrings_dir(self) -> str:
        return str(PurePosixPath(self.keyring).parent)

    def names(self, uri: str) -> bool:
        """Whether a source URI is this repository (or a path under it), http or https."""
        bare = _bare(uri)
        return any(bare == root or bare.startswith(root + "/") for root in map(_bare, self.uris))


def _bare(uri: str) -> str:
    return uri.split("://", 1)[-1].rstrip("/")


def docker_ce_repo(mirror: str, fingerprint: str, family: str, codename: str, arch: str,
                   keyring: str = DOCKER_KEYRING, sources_path: str = DOCKER_SOURCES) -> SignedRepo:
    """Docker's docker-ce repository at `mirror` (download.docker.com/linux or a mirror of it)."""
    sources = render_template("docker.sources.j2", arch=arch, keyring=keyring, mirror=mirror, family=family,
                              codename=codename)
    folder = PurePosixPath(sources_path).parent
    return SignedRepo("Docker", mirror, f"{mirror}/{family}/gpg", fingerprint, "docker_key_fingerprint",
                      keyring, sources_path, sources.encode(), (f"{mirror}/{family}", f"{DOCKER_UPSTREAM}/{family}"),
                      (str(folder / "docker.list"),))


def nvidia_toolkit_repo(mirror: str, fingerprint: str, keyring: str = NVIDIA_KEYRING,
                        sources_path: str = NVIDIA_SOURCES) -> SignedRepo:
    """NVIDIA's libnvidia-container repository (the Container Toolkit) at `mirror`."""
    sources = render_template("nvidia-container-toolkit.sources.j2", keyring=keyring, mirror=mirror)
    folder = PurePosixPath(sources_path).parent
    return SignedRepo("NVIDIA", mirror, f"{mirror}/gpgkey", fingerprint, "nvidia_key_fingerprint",
                      keyring, sources_path, sources.encode(), (mirror, NVIDIA_UPSTREAM),
                      (str(folder / "nvidia-container-toolkit.list"),))


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


def same_repo_files(repo: SignedRepo, source_files: dict[str, bytes]) -> dict[str, bytes]:
    """Pure: the other files of the sources file's folder that hold this repository, to be replaced by it.

    One of repo.old_paths is replaced whatever it says; another file when every source it has is
    this repository.  A file that also has other repositories is refused (FleetError): removing it
    would drop them, keeping it would configure this one twice."""
    folder = str(PurePosixPath(repo.sources_path).parent)
    found = {}
    for path, content in sorted(source_files.items()):
        if path == repo.sources_path or str(PurePosixPath(path).parent) != folder:
            continue
        uris = mirrors_in(content.decode("utf-8", "replace"))
        ours = [uri for uri in uris if repo.names(uri)]
        if path in repo.old_paths or (ours and len(ours) == len(uris)):
            found[path] = content
        elif ours:
            others = ", ".join(uri for uri in uris if not repo.names(uri))
            raise FleetError(f"{path} names {repo.name}'s repository ({ours[0]}) beside other sources ({others}); "
                             f"gpufleet writes it to {repo.sources_path} and would have it twice: remove its "
                             f"{repo.name} entry yourself (nothing was changed)")
    return found


def removal(path: str, content: bytes, why: str) -> Action:
    """Rename an apt source file to PATH.gpufleet.bak (apt ignores *.bak), its removal shown as a diff."""
    backup = path + BACKUP_SUFFIX

    def forget(facts) -> None:
        facts.apt_source_files.pop(path, None)
    return Action(f"remove {path} ({why}; kept as {PurePosixPath(backup).name})",
                  lambda c: c.run(["mv", "-f", "-T", "--", path, backup], sudo=True),
                  diff=unified_diff(path, content, None), known_result=forget)


def repo_actions(repo: SignedRepo, facts: HostFacts) -> tuple[list[Action], bool]:
    """(actions that make the keyring and sources file right, whether the repository's URIs change).

    The URIs change when the mirror does, not when the same repository moves from a one-line file
    into the .sources file."""
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
    current = facts.files.get(repo.sources_path, ABSENT)
    replaced = same_repo_files(repo, facts.apt_source_files)
    for path, content in replaced.items():
        actions.append(removal(path, content, f"{repo.name}'s repository goes into {repo.sources_path}"))
    sources = FileChange(repo.sources_path, current, repo.sources)
    if sources.needed:
        actions.append(file_action(sources))
    before = [current.content, *replaced.values()] if current.exists else list(replaced.values())
    return actions, repo_uris(repo, before) != repo_uris(repo, [repo.sources])


def repo_uris(repo: SignedRepo, contents) -> set[str]:
    """Pure: the URIs of this repository that apt source file contents name."""
    return {_bare(uri) for content in contents for uri in mirrors_in(content.decode("utf-8", "replace"))
            if repo.names(uri)}


def plan_repo_packages(repo: SignedRepo, facts: HostFacts, packages, conflicts=(), why: str = "") -> list[Action]:
    """Key, sources file and `packages` from `repo`; installed `conflicts` are removed first.

    Empty when all is in place.  The packages are (re)installed when one is missing or the
    repository's URIs changed (a new mirror).  `why` is said with the install (which version and why).
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
        actions.append(Action(f"install {' '.join(wanted)} from {repo.base_url}" + (f" ({why})" if why else ""),
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
