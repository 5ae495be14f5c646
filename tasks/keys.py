"""`fab sync-keys`: authorized_keys on every host and in every container, exactly.

The inventory's keys are added, revoked keys removed, and every other line (keys
added by hand, comments, options like from=) is kept as it is.  A change that
would remove the key this tool logs in with, or leave an account with no key,
is refused: the tool never locks you out.
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from invoke import task

from gpufleet import authorized_keys
from gpufleet.errors import FleetError, InputError
from gpufleet.fleet import fleet_task
from gpufleet.files import FileChange, file_action, in_container
from gpufleet.inventory import Inventory
from gpufleet.paths import CONTAINER_AUTHORIZED_KEYS, authorized_keys_of, home_of
from gpufleet.plan import Action, Plan, Step
from . import HOST_TASK_HELP
from gpufleet.container_changes import tracks_tool_writes

KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")


def read_keys(inventory: Inventory, entries: list[str], what: str) -> list:
    """[local] public_keys / revoked_keys: each a key line or a path to a .pub file."""
    keys = []
    for number, entry in enumerate(entries):
        source = f"{inventory.path}: local.{what}[{number}]"
        if entry.strip().startswith(KEY_PREFIXES):
            keys.append(authorized_keys.parse_public_key(entry.strip(), source=source))
            continue
        path = Path(os.path.expanduser(entry))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"{source}: cannot read {path}: {e.strerror}") from None
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not found:
            raise InputError(f"{source}: {path} holds no public key")
        keys += [authorized_keys.parse_public_key(line, source=f"{source} ({path})") for line in found]
    return keys


def wanted_keys(inventory: Inventory) -> tuple[list, list]:
    """(keys to install, keys to revoke), validated; refuses to revoke the login key."""
    add = read_keys(inventory, inventory.local.public_keys, "public_keys")
    revoke = read_keys(inventory, inventory.local.revoked_keys, "revoked_keys")
    identity = inventory.local.identity
    if identity and Path(f"{identity}.pub").exists():
        login = authorized_keys.parse_public_key(Path(f"{identity}.pub").read_text().strip(),
                                                 source=f"{identity}.pub")
        if any(k.identity == login.identity for k in revoke):
            raise InputError(f"{inventory.path}: local.revoked_keys: revokes the key this tool logs in with "
                             f"({identity}.pub); that would lock you out")
    revoked = {k.identity for k in revoke}
    return [k for k in add if k.identity not in revoked], revoke


def check_keys(inventory: Inventory, **_) -> None:
    wanted_keys(inventory)


def key_change(path: str, current, add, revoke, owner: str, group: str) -> tuple[FileChange | None, list[str]]:
    text = current.text if current.exists else ""
    result = authorized_keys.sync(text, add, revoke)
    if current.exists and not result.remaining and text.strip():
        raise FleetError(f"{path}: the change would leave no usable key; refusing (you would be locked out)")
    change = FileChange(path, current, result.text.encode(), mode="0600", owner=owner, group=group, parent_mode="0700")
    return (change if change.needed else None), [f"{path} line {p}" for p in result.problems]


def fingerprint(blob: str) -> str:
    """Pure: OpenSSH's SHA256 fingerprint of a key's base64 blob (what `ssh-add -l` shows)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")


def refuse_revoking_login_key(c, revoke) -> None:
    """The key this session logged in with (from the agent too, where no `identity` is set) is never revoked."""
    login = c.session.login_key()
    if login and login in {k.identity for k in revoke}:
        raise FleetError(f"{c.inventory.path}: local.revoked_keys: revokes the key this tool logged in to {c.name} "
                         f"with ({login[0]} {fingerprint(login[1])}); that would lock you out; nothing was changed")


def plan_keys(c) -> Plan:
    f = c.facts()
    add, revoke = wanted_keys(c.inventory)
    refuse_revoking_login_key(c, revoke)
    user = c.host.user
    home = f.homes.get(user)
    if home is None:
        raise FleetError(f"user {user!r} has no home on this host (getent passwd {user} gives none)")
    if authorized_keys_of(user, {user: home}) not in f.files:  # not where homes usually are: read it there
        c.run_state["homes"] = {user: home}
        c.invalidate()
        f = c.facts()
    homes = {user: home}
    targets = [(None, authorized_keys_of(user, homes), f.file(authorized_keys_of(user, homes)),
                f.file(f"{home_of(user, homes)}/.ssh"), user)]
    for name, inside in c.running_containers():
        targets.append((name, CONTAINER_AUTHORIZED_KEYS, inside.file(CONTAINER_AUTHORIZED_KEYS),
                        inside.file("/root/.ssh"), "root"))
    actions, notes = c.once_running(lambda name: f"write {CONTAINER_AUTHORIZED_KEYS} with the {len(add)} key(s)"), []
    for container, path, current, ssh_dir, owner in targets:
        where = f"{container}: " if container else ""
        change, problems = key_change(path, current, add, revoke, owner=owner, group=owner)
        notes += [where + p for p in problems]
        if change:
            actions.append(file_action(change, container=container))
        directory = path.rsplit("/", 1)[0]
        if ssh_dir.exists and ssh_dir.mode != "0700":
            argv = ["chmod", "700", "--", directory]
            actions.append(Action(f"{where}chmod 700 {directory} (was {ssh_dir.mode})",
                                  lambda c, a=argv, n=container: c.run(in_container(n, a) if n else a, sudo=True)))
        if ssh_dir.exists and (ssh_dir.owner, ssh_dir.group) != (owner, owner):
            argv = ["chown", f"{owner}:{owner}", "--", directory]
            actions.append(Action(f"{where}chown {owner}:{owner} {directory} (was {ssh_dir.owner}:{ssh_dir.group})",
                                  lambda c, a=argv, n=container: c.run(in_container(n, a) if n else a, sudo=True)))
    plan = Plan.change(*actions) if actions else Plan.ok(
        f"authorized_keys hold the {len(add)} key(s) and none of the {len(revoke)} revoked")
    if notes:
        warning = "kept lines that are not valid keys: " + "; ".join(notes)
        if plan.actions:
            plan.actions[0].warning = warning
        else:
            plan.reason += f" (warning: {warning})"
    return plan


KEYS = Step("keys.authorized", tracks_tool_writes(plan_keys))


@task(name="sync-keys", help=HOST_TASK_HELP)
@fleet_task(default_hosts="all", before=check_keys)
def sync_keys(c, dry_run=False, json=None):
    """Make authorized_keys on hosts and in containers hold exactly the inventory's keys."""
    c.run_steps([KEYS])
