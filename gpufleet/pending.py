"""Restarts a written config file still waits for, kept as records on the host.

A config file and the restart that applies it are two remote commands; a run cut between
them (Ctrl-C, a dropped connection, a restart that failed) leaves the file as wanted and
the old process running, and the next run's plan would see nothing to do.  So the record is
written before the file and removed only after the restart succeeded; a plan that finds it
restarts.  The records live in PENDING_DIR on the server, a folder no container can write.
"""
from __future__ import annotations

from gpufleet.errors import ValidationFailed
from gpufleet.facts import ABSENT, RemoteFile
from gpufleet.files import FileChange, apply_file, file_action
from gpufleet.plan import Action
from gpufleet.remote import Session

PENDING_DIR = "/var/lib/gpufleet/pending"
DOCKER_RESTART = f"{PENDING_DIR}/docker-restart"
CONTAINERD_RESTART = f"{PENDING_DIR}/containerd-restart"


def container_restart(name: str) -> str:
    """The record of a container that must restart to run its new entrypoint."""
    return f"{PENDING_DIR}/container-{name}-restart"


def sshd_reload(name: str) -> str:
    """The record of a container's sshd that must re-read its new sshd_config."""
    return f"{PENDING_DIR}/container-{name}-sshd-reload"


def is_pending(facts, record: str) -> bool:
    """Whether the probe found `record` on the host."""
    return facts.files.get(record, ABSENT).exists


def mark(session: Session, record: str, why: str) -> None:
    """Write the record (atomically, like every file the tool writes)."""
    apply_file(session, FileChange(record, ABSENT, (why + "\n").encode(), mode="0600", backup=False))


def clear(session: Session, record: str) -> None:
    """Remove the record, once the restart it asked for succeeded."""
    session.run(["rm", "-f", "--", record], sudo=True)


def write_then_restart(session: Session, change: FileChange, record: str, why: str,
                       was_pending: bool = False) -> None:
    """Write the record, then the file; a file that fails validation is not written, so its record
    goes too (unless an earlier cut run left it)."""
    mark(session, record, why)
    try:
        apply_file(session, change)
    except ValidationFailed:
        if not was_pending:
            clear(session, record)
        raise


def file_action_then_restart(change: FileChange, record: str, why: str, was_pending: bool) -> Action:
    """file_action(change) that first records the restart the new file needs."""
    action = file_action(change)
    written = action.known_result

    def known_result(facts) -> None:
        written(facts)
        facts.files[record] = RemoteFile(True, (why + "\n").encode(), "0600", "root", "root")
    action.apply = lambda ctx: write_then_restart(ctx.session, change, record, why, was_pending)
    action.known_result = known_result
    return action


def restart_and_clear(restart, record: str):
    """An Action's apply: `restart(ctx)`, then the record is removed."""
    def apply(ctx):
        note = restart(ctx)
        clear(ctx.session, record)
        return note
    return apply
