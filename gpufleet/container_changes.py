"""Pure: which entries of a container's `docker diff` are the user's work, and which the tool's own writes.

The tool writes into a container in two ways. The entrypoint rewrites a few files at every start, and
sshd and the runtime directories change on their own: those paths are fixed (OWN_FILES), as are the
mount points of the container's volumes. The stages install packages and write files (sshd, tools,
apt sources, keys, git): what changed while they acted is recorded in the container's footprint, every
path with its kind and stamp (mtime and size), but only where the tool's own actions wrote it: the
files of the packages its apt runs installed (`dpkg -L`), the packaging system's own state, and the
paths it writes (TOOL_PATHS). A file the user writes meanwhile stays the user's.
An entry of `docker diff` is the user's when it is neither, or when its kind or stamp moved since the
tool last wrote it (a file the tool wrote and the user edited later is the user's). The stamp is the
mtime, not the ctime: moving Docker's data root (`cp -a`) keeps mtimes but gives every file a new ctime.

Everything is read on the server, where the container cannot change it: `docker diff` from the engine,
the stamps from the container's upper layer (docker inspect's GraphDriver.Data.UpperDir, readable
also when the container is stopped), and the footprint from a file under STATE_DIR, bound to the
container's id.
"""
from __future__ import annotations

import base64
import gzip
import json
import shlex
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from gpufleet.errors import FleetError
from gpufleet.facts import PROBE_FUNCTIONS, ProbeOutputError, RemoteFile, split_sections
from gpufleet.files import BACKUP_SUFFIX, ORIGINAL_SUFFIX, FileChange, apply_file, in_container
from gpufleet.paths import (APT_PROXY_CONF, CONTAINER_APT_SOURCES, CONTAINER_AUTHORIZED_KEYS, CONTAINER_DEPLOY_KEY,
                            CONTAINER_GITCONFIG, CONTAINER_KNOWN_HOSTS)
from gpufleet.plan import Plan
from gpufleet.remote import Script

# on the server, outside every folder mounted into a container: STATE_DIR/NAME/tool-writes
STATE_DIR = "/var/lib/gpufleet/containers-state"
# where earlier versions kept the footprint and the last snapshot's moment, inside the container
FOOTPRINT = "/var/lib/gpufleet-tool-writes"
SNAPSHOT_MARKER = "/var/lib/gpufleet-last-snapshot"
# the paths the tool's stages write in a container (with the backups and originals they keep)
TOOL_PATHS = frozenset(path + suffix for path in (APT_PROXY_CONF, *CONTAINER_APT_SOURCES, CONTAINER_AUTHORIZED_KEYS,
                                                  CONTAINER_GITCONFIG, CONTAINER_KNOWN_HOSTS, CONTAINER_DEPLOY_KEY,
                                                  CONTAINER_DEPLOY_KEY + ".pub", "/root/.ssh/config")
                       for suffix in ("", ORIGINAL_SUFFIX, BACKUP_SUFFIX))
# what apt and dpkg write besides the packages' files when they install (their state, caches and logs,
# and what the maintainer scripts of the tool's packages make: host keys, the sshd user, alternatives)
PACKAGING_STATE = ("/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt", "/var/cache/debconf", "/var/cache/ldconfig",
                   "/var/log/apt", "/var/log/dpkg.log", "/var/log/alternatives.log", "/etc/ld.so.cache",
                   "/etc/alternatives", "/var/lib/ucf", "/etc/ssh", "/etc/passwd", "/etc/passwd-", "/etc/group",
                   "/etc/group-", "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                   "/etc/systemd/system", "/var/lib/systemd/deb-systemd-helper-enabled", "/etc/ssl/certs",
                   "/etc/ca-certificates.conf", "/usr/local/share/ca-certificates", "/etc/hosts.allow",
                   "/etc/hosts.deny", "/etc/runit/runsvdir", *(f"/etc/rc{level}.d" for level in "0123456S"))
# a package's /bin, /sbin and /lib files are in /usr on a merged-/usr system (Debian 12, Ubuntu 22.04)
MERGED_USR = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")
# rewritten by our entrypoint at every start (templates/entrypoint.sh.j2), runtime state, sshd's login
# records, docker's --init binary (mounted in), and our own markers: never the user's work, and gone or
# rewritten in a re-created container
OWN_FILES = ("/etc/environment", "/etc/environment.gpufleet", "/etc/profile.d/00-gpufleet-env.sh",
             "/root/.ssh/environment", "/run", "/proc", "/sys", "/dev", "/tmp",
             "/var/log/wtmp", "/var/log/btmp", "/var/log/lastlog", "/usr/sbin/docker-init",
             # Docker's own, made for every new container (so also newer than a snapshot's marker)
             "/etc/resolv.conf", "/etc/hostname", "/etc/hosts", "/etc/mtab", "/.dockerenv",
             FOOTPRINT, SNAPSHOT_MARKER)

Entry = tuple  # (kind, stamp): kind A/C/D from docker diff, stamp "" where the path does not exist


def parse_diff(text: str) -> dict[str, str]:
    """`docker diff` output → {path: kind}."""
    entries = {}
    for line in text.splitlines():
        if len(line) > 2 and line[0] in "ACD" and line[1] == " " and line[2] == "/":
            entries[line[2:]] = line[0]
    return entries


def leaves(entries: dict[str, str]) -> dict[str, str]:
    """The entries that are not a directory holding another entry (docker diff lists every parent of a
    changed file as changed; the file itself is the change)."""
    parents = set()
    for path in entries:
        parent = path.rsplit("/", 1)[0]
        while parent and parent not in parents:
            parents.add(parent)
            parent = parent.rsplit("/", 1)[0]
    return {path: kind for path, kind in entries.items() if path not in parents}


def is_own(path: str, mounts=()) -> bool:
    """A fixed path of the tool's (OWN_FILES) or a mount point of the container (or inside one)."""
    return any(path == own or path.startswith(own.rstrip("/") + "/") for own in (*OWN_FILES, *mounts))


STAT_FORMAT = "%y %s\t%n"  # mtime (nanoseconds) and size, then the path


def parse_stamps(text: str) -> dict[str, str]:
    """`find UPPER -printf STAMPS_FORMAT` (NUL-terminated; or `stat -c STAT_FORMAT`, a line each) →
    {path: stamp}; paths that could not be read are left out."""
    stamps = {}
    for line in text.split("\0") if "\0" in text else text.splitlines():
        stamp, sep, path = line.partition("\t")
        if sep and path.startswith("/"):
            stamps[path] = stamp
    return stamps


def user_changes(diff: dict[str, str], stamps: dict[str, str], footprint: dict[str, Entry],
                 mounts=()) -> list[str]:
    """The user's entries of `docker diff`, as `KIND PATH` lines: neither the tool's fixed paths nor in
    its footprint with the same kind and stamp."""
    return [f"{kind} {path}" for path, kind in leaves(diff).items()
            if not is_own(path, mounts) and footprint.get(path) != (kind, stamps.get(path, ""))]


def record_tool_writes(footprint: dict[str, Entry], before: dict[str, str], before_stamps: dict[str, str],
                       after: dict[str, str], after_stamps: dict[str, str], mounts=(), *,
                       claimed) -> dict[str, Entry]:
    """The footprint after the tool's actions: what was the tool's and is untouched, and what changed
    meanwhile where `claimed(path)` says the tool's own actions wrote it, each as it is now. Whatever
    else changed meanwhile is the user's (written beside a long apt run, say); so is a path the user had
    changed before, even if the tool changed it again."""
    was = {path: (kind, before_stamps.get(path, "")) for path, kind in leaves(before).items()}
    recorded = {}
    for path, kind in leaves(after).items():
        now = (kind, after_stamps.get(path, ""))
        if is_own(path, mounts):
            continue
        if was.get(path) == now:
            if footprint.get(path) == now:
                recorded[path] = now
        elif claimed(path) and (path not in was or footprint.get(path) == was[path]):
            recorded[path] = now
    return recorded


def tool_claims(package_files, installed_packages: bool):
    """Whether a path is one the tool's actions write: its TOOL_PATHS, the files of the packages it
    installed, and (when it installed any) the packaging system's own state (PACKAGING_STATE)."""
    files = frozenset([*package_files, *("/usr" + f for f in package_files if f.startswith(MERGED_USR))])

    def claimed(path: str) -> bool:
        return path in TOOL_PATHS or path in files or (installed_packages and any(
            path == p or path.startswith(p + "/") for p in PACKAGING_STATE))
    return claimed


def parse_installed(text: str) -> dict[str, str]:
    """`dpkg-query -W -f '${db:Status-Abbrev}\\t${binary:Package}\\t${Version}\\n'` → {installed package:
    its version}."""
    installed = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and len(parts[0]) > 1 and parts[0][1] == "i" and parts[1]:
            installed[parts[1]] = parts[2]
    return installed


def changed_packages(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The packages installed or upgraded in between (an apt run upgrades dependencies an image has)."""
    return sorted(name for name, version in after.items() if before.get(name) != version)


def parse_package_files(text: str) -> list[str]:
    """`dpkg -L PACKAGES` and dpkg's alternatives (PACKAGE_FILES) → the paths (notes on diversions and the
    alternatives' modes and priorities are left out)."""
    return [line for line in text.splitlines() if line.startswith("/")]


def render_footprint(footprint: dict[str, Entry], container_id: str = "") -> str:
    """A `container<TAB>ID` line, then one `KIND<TAB>STAMP<TAB>PATH` line per path, sorted."""
    return f"container\t{container_id}\n" + "".join(
        f"{kind}\t{stamp}\t{path}\n" for path, (kind, stamp) in sorted(footprint.items()))


def parse_footprint(text: str, container_id: str | None = None) -> dict[str, Entry]:
    """The footprint file → {path: (kind, stamp)}; lines it does not understand are left out (they then
    count as the user's: a snapshot too many, never one too few), and so is all of a record of another
    container than `container_id` (one of the same name, since re-created)."""
    lines = text.splitlines()
    if container_id is not None and (not lines or lines[0] != f"container\t{container_id}"):
        return {}
    footprint = {}
    for line in lines:
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] in ("A", "C", "D") and parts[2].startswith("/"):
            footprint[parts[2]] = (parts[0], parts[1])
    return footprint


@dataclass
class ContainerState:
    """What one state command saw: `docker diff`, the stamps of the container's upper layer, the
    footprint (None: there is none, or it is another container's), and with `packages` the installed
    packages (None: not asked, or the container is stopped)."""
    diff: dict[str, str]
    stamps: dict[str, str]
    footprint: dict[str, Entry]
    footprint_text: str | None
    error: str = ""  # docker diff failed: why
    container_id: str = ""
    packages: dict[str, str] | None = None


def unpack_state(text: str) -> dict[str, tuple[int, str]]:
    """The state command's output is one section `state`: its sections, gzipped and base64-encoded (each
    framed out of band, so no path in the container can frame a section); this gives them back (or a
    failed `diff` section saying why)."""
    try:
        rc, body = split_sections(text).get("state", (1, text[-200:] or "no output"))
        if rc != 0:
            return {"diff": (rc or 1, body)}
        return split_sections(gzip.decompress(base64.b64decode(body.strip(), validate=True)).decode("ascii"))
    except (ValueError, OSError, EOFError, ProbeOutputError) as e:
        return {"diff": (1, f"unreadable state output ({e})")}


def parse_state(text: str) -> ContainerState:
    """The sections diff, stamps and footprint as plain text (the captures of tests/fixtures)."""
    return parse_sections(split_sections(text))


def parse_sections(sections: dict[str, tuple[int, str]]) -> ContainerState:
    """The state command's sections (diff, id, stamps, footprint, packages) → ContainerState."""
    rc_diff, diff = sections.get("diff", (1, "no output"))
    rc_id, container_id = sections.get("id", (1, ""))
    container_id = container_id.strip() if rc_id == 0 else ""
    rc_fp, footprint = sections.get("footprint", (1, ""))
    if rc_fp == 0 and "id" in sections and not container_id:
        rc_fp = 1  # a record is only trusted for the container it names
    rc_pk, packages = sections.get("packages", (1, ""))
    return ContainerState(diff=parse_diff(diff) if rc_diff == 0 else {},
                          stamps=parse_stamps(sections.get("stamps", (1, ""))[1]) if sections.get(
                              "stamps", (1, ""))[0] == 0 else {},
                          footprint=parse_footprint(footprint, container_id if "id" in sections else None)
                          if rc_fp == 0 else {},
                          footprint_text=footprint if rc_fp == 0 else None,
                          error="" if rc_diff == 0 else (diff.strip()[-200:] or f"exit {rc_diff}"),
                          container_id=container_id,
                          packages=parse_installed(packages) if rc_pk == 0 else None)


# --- the state command, read and recorded on the host ---

STAMPS_FORMAT = "%T@ %s\\t/%P\\0"  # find -printf: mtime (seconds since the epoch) and size, then the path
UPPER_DIR = "{{.GraphDriver.Data.UpperDir}}"


# the files of the packages, and the links of dpkg's alternatives (update-alternatives makes /usr/bin/vi)
PACKAGE_FILES = 'dpkg -L -- "$@"; cat /var/lib/dpkg/alternatives/* 2>/dev/null; true'


def record_path(name: str) -> str:
    """The server-side footprint of the tool's writes in container `name`."""
    return f"{STATE_DIR}/{name}/tool-writes"


def encoded(section: str, inner: str, *args: str) -> str:
    """`sec SECTION` running shell code `inner` with `args` that writes its output to "$0" (a temp file),
    then prints it (framed out of band by `sec`); what `inner` says on stderr (a container's commands among
    it) is printed only when it fails, in place of the output."""
    script = f'{{ {inner}; }} 2>"$0.err" && cat "$0" || {{ r=$?; cat "$0.err"; exit $r; }}'
    return f"sec {section} " + shlex.join(["sh", "-c", script, "$d", *args]).replace("'$d'", '"$d"')


def state_script(name: str, packages: bool = False) -> Script:
    """One command on the server: the container's id, its `docker diff`, the stamps of its upper layer,
    the footprint and (with `packages`, the container running) its installed packages; compressed (a
    container with a few packages installed has some 10,000 entries)."""
    inner = [PROBE_FUNCTIONS, "d=$(mktemp) || exit 1", "trap 'rm -f \"$d\" \"$d.err\"' EXIT",
             encoded("id", 'docker inspect -f "{{.Id}}" "$1" > "$0"', name),
             encoded("diff", 'docker diff "$1" > "$0"', name),
             # find never follows a link: the layer is the container's to change
             encoded("stamps", f'u=$(docker inspect -f {shlex.quote(UPPER_DIR)} "$1") && [ -d "$u" ] && '
                               f'find "$u" -printf "$2" > "$0"', name, STAMPS_FORMAT),
             encoded("footprint", 'cat -- "$1" > "$0"', record_path(name))]
    if packages:
        inner.append(encoded("packages", 'docker exec -u root "$1" dpkg-query -W -f "$2" > "$0"', name,
                             "${db:Status-Abbrev}\\t${binary:Package}\\t${Version}\\n"))
    packed = "{ " + "\n".join(inner) + "\n} | gzip -1 -c | base64 -w0"
    return Script(f"{PROBE_FUNCTIONS}\nsec state sh -c {shlex.quote(packed)}")


def read_state(c, name: str, packages: bool = False) -> ContainerState:
    """The container's diff, stamps and footprint now, running or stopped."""
    output = c.run(state_script(name, packages), sudo=True, check=False).stdout
    state = parse_sections(unpack_state(output))
    if state.error:
        raise FleetError(f"docker diff {name} failed: {state.error}")
    return state


def mount_points(c, name: str) -> list[str]:
    info = c.facts().containers.get(name) or {}
    return [m["Destination"] for m in info.get("Mounts") or [] if m.get("Destination")]


def read_user_changes(c, name: str) -> list[str]:
    """The entries of the container's `docker diff` that are the user's, not the tool's own writes."""
    state = read_state(c, name)
    return user_changes(state.diff, state.stamps, state.footprint, mount_points(c, name))


def save_tool_writes(c, name: str, before: ContainerState, mounts: list[str]) -> None:
    """Add what the tool's actions wrote in the container since `before` to its footprint."""
    after = read_state(c, name, packages=True)
    if not after.container_id or after.container_id != before.container_id:
        return  # re-created meanwhile: nothing of the old record applies (its writes count as the user's)
    installed = changed_packages(before.packages or {}, after.packages or {})
    files = []
    if installed:
        listed = c.run(in_container(name, ["sh", "-c", PACKAGE_FILES, "sh", *installed]), sudo=True, check=False)
        files = parse_package_files(listed.stdout)
    footprint = record_tool_writes(before.footprint, before.diff, before.stamps, after.diff, after.stamps, mounts,
                                   claimed=tool_claims(files, bool(installed)))
    text = render_footprint(footprint, after.container_id)
    if text != after.footprint_text:
        current = RemoteFile(after.footprint_text is not None, (after.footprint_text or "").encode())
        apply_file(c.session, FileChange(record_path(name), current, text.encode(), backup=False))


def tracks_tool_writes(plan):
    """A step's plan whose actions' writes inside the host's running containers are recorded in their
    footprints as the tool's own (so that a re-creation does not take them for the user's work).

    The state is read once before the first such action of a run and once after the host's last step,
    not around every step: each read walks the container's whole layer. What changed in between is
    recorded only where the tool's actions write (tool_claims)."""
    def tracked(c) -> Plan:
        result = plan(c)
        if not result.actions:
            return result

        def begin(apply):
            def run(ctx):
                start_tracking(ctx)
                return apply(ctx)
            return run
        actions = list(result.actions)
        actions[0] = replace(actions[0], apply=begin(actions[0].apply))
        return replace(result, actions=actions)
    return tracked


def start_tracking(c) -> None:
    """Read each running container's state (once per run) and record what changed after the last step."""
    if "tool_writes_before" in c.run_state:
        return
    running = {name: mount_points(c, name) for name in c.host.containers if name in c.facts().inside}
    before = c.run_state["tool_writes_before"] = {name: read_state(c, name, packages=True) for name in running}

    def finish(ctx) -> None:
        try:
            for name, mounts in running.items():
                save_tool_writes(ctx, name, before[name], mounts)
        except FleetError as e:
            # safe side: writes left unrecorded count as the user's, so a re-creation snapshots them
            raise FleetError(f"the tool's own writes in the containers were not recorded ({e}); "
                             "a later re-creation may take a snapshot it does not need") from None
    c.on_finish(finish)


# --- what changed since the last snapshot (ops.rm) ---

# set on a snapshot image: the server's clock just before `docker commit` (ctimes are the same clock's)
SNAPSHOT_STARTED_LABEL = "gpufleet.snapshot-started"
# the kernel stamps ctimes from its coarse clock, up to a tick behind `date`'s
CLOCK_SLACK = 0.1
CHANGED_FORMAT = "%C@\\t%y\\t/%P\\0"  # find -printf: ctime (seconds since the epoch), type, path


def snapshot_moment(created: str, labels: dict | None) -> float | None:
    """When a snapshot was taken, in seconds since the epoch: its SNAPSHOT_STARTED_LABEL, else (taken
    before there was one) the image's creation time from the engine; None when neither reads."""
    try:
        return float((labels or {})[SNAPSHOT_STARTED_LABEL])
    except (KeyError, ValueError):
        pass
    head, dot, fraction = created.strip().rstrip("Z").partition(".")
    try:
        moment = datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    return moment + float("0." + "".join(ch for ch in fraction if ch.isdigit())[:9] or "0")


def parse_snapshot_moments(text: str) -> list[float]:
    """`docker image inspect -f '{{.Created}}<TAB>{{json .Config.Labels}}' TAGS` → their moments."""
    moments = []
    for line in text.splitlines():
        created, _, labels = line.partition("\t")
        try:
            parsed = json.loads(labels or "null")
        except ValueError:
            parsed = None
        moment = snapshot_moment(created, parsed if isinstance(parsed, dict) else None)
        if moment is not None:
            moments.append(moment)
    return moments


def changed_since(text: str, since: float, mounts=()) -> list[str]:
    """`find UPPER ! -type d -printf CHANGED_FORMAT` → the paths changed after `since` (a deletion as
    `D PATH`): the ctime of a file in the container's layer is set by the kernel on every change, and
    no tool in the container can set it back (`touch -d`, `tar x`, `cp -p`, `rsync -a` set mtimes).
    Directories are left out (a file made and removed again changes its directory only)."""
    changed = []
    for record in text.split("\0"):
        ctime, _, rest = record.partition("\t")
        kind, _, path = rest.partition("\t")
        try:
            newer = float(ctime) > since - CLOCK_SLACK
        except ValueError:
            continue
        if newer and path.startswith("/") and kind != "d" and not is_own(path, mounts):
            # overlayfs marks a deletion with a character device 0/0 (a whiteout)
            changed.append(f"D {path}" if kind == "c" else path)
    return changed
