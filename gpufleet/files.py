"""The one way stages change files on a host.

render (StrictUndefined) → compare with what is there → write a temp file beside
the target → validate it → back up the old file → atomic rename → owner and mode.
The whole write is one remote command, so a dropped connection leaves the old
file or the new one, never a partial one.

The write never follows a symbolic link, whoever could plant one in the target's
folder (a user in their ~/.ssh, root in a container in a folder mounted into it): the
temp file is a new file (created exclusively), its owner and mode are set through
the descriptor it was written through, the backup is a new hard link to the old file,
and the rename replaces whatever has the target's name.
"""
from __future__ import annotations

import base64
import difflib
import hashlib
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2

from gpufleet.errors import CommandFailed, FleetError, InputError, ValidationFailed
from gpufleet.facts import LINK, RemoteFile
from gpufleet.local_files import BACKUP_SUFFIX
from gpufleet.plan import Action, Plan
from gpufleet.remote import Script, Session

# templates/ of the checkout, or gpufleet/templates where the wheel installed it
TEMPLATES = next(path for path in (Path(__file__).resolve().parent / "templates",
                                   Path(__file__).resolve().parent.parent / "templates") if path.is_dir())
ORIGINAL_SUFFIX = ".gpufleet.orig"
TEMP_MARK = ".gpufleet-tmp-"
VALIDATION_FAILED = 97
INCOMPLETE = 98

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render_template(template: str, **values) -> str:
    """Render templates/TEMPLATE; a missing value names the template and line."""
    try:
        return _env.get_template(template).render(**values)
    except jinja2.UndefinedError as e:
        raise InputError(f"template {template}: {e.message}") from None
    except jinja2.TemplateSyntaxError as e:
        raise FleetError(f"template {e.name or template} line {e.lineno}: {e.message}") from None


@dataclass
class FileChange:
    """A planned write: what is there now, and what should be."""
    path: str
    current: RemoteFile
    content: bytes
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    # validator(temp_path) -> argv run on the host before the file is installed
    validate: Callable[[str], list[str]] | None = None
    backup: bool = True
    keep_original: bool = False  # also keep the very first version as PATH.gpufleet.orig
    # a missing parent directory is created with this mode and the file's owner (~/.ssh: 0700);
    # None: created as root with the umask
    parent_mode: str | None = None

    @property
    def content_changed(self) -> bool:
        return not self.current.exists or self.current.content != self.content

    @property
    def needed(self) -> bool:
        return (self.content_changed or self.current.mode != self.mode
                or self.current.owner != self.owner or self.current.group != self.group)

    def summary(self) -> str:
        if not self.current.exists:
            return f"create {self.path}"
        if self.current is LINK:
            return f"replace the symbolic link {self.path} with the file"
        if self.content_changed:
            return f"update {self.path}"
        return f"fix owner/mode of {self.path} ({self.current.owner}:{self.current.group} {self.current.mode} -> {self.owner}:{self.group} {self.mode})"

    def diff(self) -> str:
        return unified_diff(self.path, self.current.content if self.current.exists else None, self.content)


def unified_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    old_lines = [] if old is None else old.decode("utf-8", "replace").splitlines(keepends=True)
    new_lines = [] if new is None else new.decode("utf-8", "replace").splitlines(keepends=True)
    lines = difflib.unified_diff(old_lines, new_lines, fromfile=path if old is not None else "/dev/null",
                                 tofile=path if new is not None else "/dev/null")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def write_script(change: FileChange) -> tuple[Script, str]:
    """The single shell script that installs `change`, and the temp path it uses.

    The content arrives base64-encoded on stdin.  Without a tty, sshd does not hang up the
    remote shell when the client goes away: stdin just ends early, and a cut at a base64
    boundary decodes cleanly.  So the size and SHA-256 are checked before the rename; a temp
    file left by a shell that was killed outright is removed by the next write of the target."""
    q = shlex.quote
    target = change.path
    parent = str(Path(target).parent)
    stale = f"{parent}/.{Path(target).name}{TEMP_MARK}"
    temp = stale + uuid.uuid4().hex[:12]
    digest = hashlib.sha256(change.content).hexdigest()
    if change.parent_mode:
        make_parent = (f"[ -d {q(parent)} ] || install -d -m {q(change.parent_mode)} "
                       f"-o {q(change.owner)} -g {q(change.group)} -- {q(parent)}")
    else:
        make_parent = f"(umask 022; mkdir -p -- {q(parent)})"  # not 0700 like the temp file: apt reads keyrings
    steps = [
        "set -e",
        "umask 077",
        f"t={q(temp)}",
        "trap 'rm -f \"$t\"' EXIT",
        # a dropped connection: stderr is a broken pipe (SIGPIPE), or the session is hung up
        "trap 'exit 129' HUP INT TERM PIPE",
        make_parent,
        f"rm -f -- {q(stale)}*",
        # noclobber: the temp file is created, never opened through a name someone else made
        "set -C", "exec 3>\"$t\"", "set +C",
        "base64 -d >&3",
        "f=/proc/$$/fd/3",
        f"if [ \"$(wc -c < \"$f\")\" -ne {len(change.content)} ] || "
        f"[ \"$(sha256sum < \"$f\")\" != {q(digest + '  -')} ]; then "
        f"echo 'incomplete transfer: {len(change.content)} bytes expected, the file was not installed' >&2; "
        f"exit {INCOMPLETE}; fi",
        f"chown -- {q(change.owner + ':' + change.group)} \"$f\"",
        f"chmod -- {q(change.mode)} \"$f\"",
        "exec 3>&-",
    ]
    if change.validate:
        argv = shlex.join(change.validate(temp))
        steps.append(f"if ! out=$({argv} 2>&1); then printf '%s\\n' \"$out\" >&2; exit {VALIDATION_FAILED}; fi")
    # a backup is a new name for the old file (for a link, for the link itself), never a write through a name
    there = f"{{ [ -e {q(target)} ] || [ -L {q(target)} ]; }}"
    if change.keep_original:
        original = q(target + ORIGINAL_SUFFIX)
        steps.append(f"if {there} && [ ! -e {original} ] && [ ! -L {original} ]; then "
                     f"ln -P -T -- {q(target)} {original}; fi")
    if change.backup:
        steps.append(f"if {there}; then ln -f -P -T -- {q(target)} {q(target + BACKUP_SUFFIX)}; fi")
    steps += [f"mv -f -T -- \"$t\" {q(target)}", "trap - EXIT HUP INT TERM PIPE"]
    return Script("\n".join(steps)), temp


def apply_file(session: Session, change: FileChange, container: str | None = None) -> None:
    """Install the file (inside `container` when given); a validator failure raises
    ValidationFailed and leaves the target untouched."""
    script, _ = write_script(change)
    command = script if container is None else in_container(container, script)
    result = session.run(command, sudo=True, check=False, stdin=base64.b64encode(change.content).decode())
    if result.exit_code == VALIDATION_FAILED:
        raise ValidationFailed(change.path, shlex.join(change.validate("<temp>")) if change.validate else "", result.stderr)
    if result.exit_code != 0:
        raise CommandFailed(f"write {change.path}", result.exit_code, result.stderr or result.stdout, session.name)


# the umask `docker exec` hands down is the engine's: 0000 under Docker 29 on the GPU proof's host (sshd then
# refused the /run/sshd it made), so what the tool runs in a container sets its own
IN_CONTAINER_UMASK = "umask 022"


def in_container(name: str, command) -> list[str]:
    """argv that runs an argv list or a Script inside a running container, as root, with umask 022."""
    if isinstance(command, Script):
        argv = ["sh", "-c", f"{IN_CONTAINER_UMASK}\n{command}"]
    else:
        argv = ["sh", "-c", f'{IN_CONTAINER_UMASK} && exec "$@"', "sh", *command]
    return ["docker", "exec", "-i", "-u", "root", "--", name, *argv]


def file_action(change: FileChange, container: str | None = None) -> Action:
    """An Action that installs `change` (its diff shown in plans and dry runs)."""
    where = f" in container {container}" if container else ""
    written = RemoteFile(True, change.content, change.mode, change.owner, change.group)

    def known_result(facts) -> None:
        (facts.inside[container].files if container else facts.files)[change.path] = written
    return Action(change.summary() + where, lambda ctx: apply_file(ctx.session, change, container),
                  diff=change.diff(), known_result=known_result)


def file_plan(change: FileChange, ok_reason: str, container: str | None = None) -> Plan:
    """ok when the file is already as wanted, else one action that writes it."""
    return Plan.change(file_action(change, container)) if change.needed else Plan.ok(ok_reason)


def removal_action(path: str, current: RemoteFile, why: str, container: str | None = None) -> Action:
    argv = ["rm", "-f", "--", path]
    return Action(f"remove {path} ({why})",
                  lambda ctx: ctx.run(in_container(container, argv) if container else argv, sudo=True),
                  diff=unified_diff(path, current.content, None))
