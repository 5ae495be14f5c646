"""Pure: which entries of a container's `docker diff` are the user's work, and which the tool's own writes.

The tool writes into a container in two ways. The entrypoint rewrites a few files at every start, and
sshd and the runtime directories change on their own: those paths are fixed (OWN_FILES), as are the
mount points of the container's volumes. The stages install packages and write files (sshd, tools,
apt sources, keys, git): those paths are recorded around each of the tool's own actions, in the
container's footprint, every path with its kind and stamp (mtime and size) right after the action.
An entry of `docker diff` is the user's when it is neither, or when its kind or stamp moved since the
tool last wrote it (a file the tool wrote and the user edited later is the user's). The stamp is the
mtime, not the ctime: moving Docker's data root (`cp -a`) keeps mtimes but gives every file a new ctime.
"""
from __future__ import annotations

import base64
import gzip
import shlex
from dataclasses import dataclass, replace

from gpufleet.errors import FleetError
from gpufleet.facts import PROBE_FUNCTIONS, ProbeOutputError, RemoteFile, frame, split_sections
from gpufleet.files import FileChange, apply_file
from gpufleet.plan import Plan
from gpufleet.remote import Script

# the footprint of the tool's own writes, and the moment of the last snapshot (for `ops.rm`)
FOOTPRINT = "/var/lib/gpufleet-tool-writes"
SNAPSHOT_MARKER = "/var/lib/gpufleet-last-snapshot"
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
    """`stat -c STAT_FORMAT PATHS` → {path: stamp}; paths stat could not read are left out."""
    stamps = {}
    for line in text.splitlines():
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
                       after: dict[str, str], after_stamps: dict[str, str], mounts=()) -> dict[str, Entry]:
    """The footprint after one of the tool's actions: what appeared during it, and what was already the
    tool's and untouched by the user before it, each as it is now. A path the user had changed before
    the action stays the user's even if the action changed it again."""
    was = {path: (kind, before_stamps.get(path, "")) for path, kind in leaves(before).items()}
    recorded = {}
    for path, kind in leaves(after).items():
        if is_own(path, mounts):
            continue
        if path not in was or footprint.get(path) == was[path]:
            recorded[path] = (kind, after_stamps.get(path, ""))
    return recorded


def render_footprint(footprint: dict[str, Entry]) -> str:
    """One `KIND<TAB>CTIME<TAB>PATH` line per path, sorted."""
    return "".join(f"{kind}\t{stamp}\t{path}\n" for path, (kind, stamp) in sorted(footprint.items()))


def parse_footprint(text: str) -> dict[str, Entry]:
    """The footprint file → {path: (kind, stamp)}; lines it does not understand are left out (they then
    count as the user's: a snapshot too many, never one too few)."""
    footprint = {}
    for line in text.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] in ("A", "C", "D") and parts[2].startswith("/"):
            footprint[parts[2]] = (parts[0], parts[1])
    return footprint


@dataclass
class ContainerState:
    """What one state command saw: `docker diff`, the stamps of its entries, the footprint (None: there
    is none, or the container is stopped and it could not be read)."""
    diff: dict[str, str]
    stamps: dict[str, str]
    footprint: dict[str, Entry]
    footprint_text: str | None
    error: str = ""  # docker diff failed: why


def unpack_state(text: str) -> str:
    """The state command's output is one section `state`: its sections diff, stamps and footprint,
    gzipped and base64-encoded; this gives them back (or the section itself when it failed)."""
    try:
        rc, body = split_sections(text).get("state", (1, text[-200:] or "no output"))
        return gzip.decompress(base64.b64decode(body.strip(), validate=True)).decode("utf-8", "replace") if rc == 0 \
            else frame("diff", body, rc or 1)
    except (ValueError, OSError, EOFError, ProbeOutputError):
        return frame("diff", "unreadable state output", 1)


def parse_state(text: str) -> ContainerState:
    """The unpacked output of the state command (sections diff, stamps, footprint)."""
    sections = split_sections(text)
    rc_diff, diff = sections.get("diff", (1, "no output"))
    rc_fp, footprint = sections.get("footprint", (1, ""))
    return ContainerState(diff=parse_diff(diff) if rc_diff == 0 else {},
                          stamps=parse_stamps(sections.get("stamps", (1, ""))[1]),
                          footprint=parse_footprint(footprint) if rc_fp == 0 else {},
                          footprint_text=footprint if rc_fp == 0 else None,
                          error="" if rc_diff == 0 else (diff.strip()[-200:] or f"exit {rc_diff}"))


# --- the state command, read and recorded on the host ---

def state_script(name: str) -> Script:
    """One command: the container's `docker diff`, the stamps of its entries, and its footprint,
    compressed (a container with a few packages installed has some 10,000 entries); `docker diff`
    runs once (it walks the container's whole layer)."""
    q = shlex.quote
    diff = shlex.join(["sh", "-c", 'docker diff "$0" > "$1" && cat "$1"', name]) + ' "$d"'
    stat = ["xargs -0 -r stat -c \"$0\" 2>/dev/null; true", STAT_FORMAT]
    stamps = (shlex.join(["sh", "-c", 'cut -c3- "$0" | tr "\\n" "\\000" | docker exec -i -u root "$1" sh -c "$2" "$3"'])
              + ' "$d" ' + shlex.join([name, *stat]))
    inner = "\n".join([PROBE_FUNCTIONS, "d=$(mktemp) || exit 1", "trap 'rm -f \"$d\"' EXIT",
                       f"sec diff {diff}", f"sec stamps {stamps}",
                       f"sec footprint docker exec -u root {q(name)} cat {FOOTPRINT}"])
    packed = "{ " + inner + "\n} | gzip -1 -c | base64 -w0"
    return Script(f"{PROBE_FUNCTIONS}\nsec state sh -c {q(packed)}")


def read_state(c, name: str) -> ContainerState:
    """The container's diff, stamps and footprint now (a stopped one has no stamps or footprint: every
    change in it then counts as the user's)."""
    output = c.run(state_script(name), sudo=True, check=False).stdout
    state = parse_state(unpack_state(output))
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
    """Add what the tool's action just changed in the container to its footprint."""
    after = read_state(c, name)
    footprint = record_tool_writes(before.footprint, before.diff, before.stamps,
                                                     after.diff, after.stamps, mounts)
    text = render_footprint(footprint)
    if text != after.footprint_text:
        current = RemoteFile(after.footprint_text is not None, (after.footprint_text or "").encode())
        apply_file(c.session, FileChange(FOOTPRINT, current, text.encode(), backup=False), container=name)


def tracks_tool_writes(plan):
    """A step's plan whose actions' changes inside the host's running containers are recorded in their
    footprints as the tool's own (so that a re-creation does not take them for the user's work).

    The state is read once before the first such action of a run and once after the host's last step,
    not around every step: each read walks the container's whole layer."""
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
    before = c.run_state["tool_writes_before"] = {name: read_state(c, name) for name in running}

    def finish(ctx) -> None:
        try:
            for name, mounts in running.items():
                save_tool_writes(ctx, name, before[name], mounts)
        except FleetError as e:
            # safe side: writes left unrecorded count as the user's, so a re-creation snapshots them
            raise FleetError(f"the tool's own writes in the containers were not recorded ({e}); "
                             "a later re-creation may take a snapshot it does not need") from None
    c.on_finish(finish)
