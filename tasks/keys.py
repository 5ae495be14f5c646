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

from gpufleet import authorized_keys, forwarding
from gpufleet.errors import FleetError, InputError, ValidationFailed
from gpufleet.fleet import fleet_task
from gpufleet.files import FileChange, apply_file, file_action, in_container
from gpufleet.inventory import Inventory
from gpufleet.local_files import BACKUP_SUFFIX
from gpufleet.paths import (CONTAINER_AUTHORIZED_KEYS, FORWARD_AUTHORIZED_KEYS, FORWARD_HOME, PEOPLE_KEYS,
                            SSHD_DROP_IN, authorized_keys_of, home_of)
from gpufleet.plan import Action, Plan, Step
from . import HOST_TASK_HELP
from gpufleet.container_changes import tracks_tool_writes

KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")


def read_keys(inventory: Inventory, entries: list[str], what: str, table: str = "local") -> list:
    """[local] public_keys / revoked_keys, [people.NAME] keys: each a key line or a path to a .pub file."""
    keys = []
    for number, entry in enumerate(entries):
        source = f"{inventory.path}: {table}.{what}[{number}]"
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


def people_keys(inventory: Inventory) -> dict[str, list]:
    """{person: their keys}, validated, less the revoked ones."""
    revoked = {k.identity for k in read_keys(inventory, inventory.local.revoked_keys, "revoked_keys")}
    return {name: [k for k in read_keys(inventory, list(person.keys), "keys", f"people.{name}")
                   if k.identity not in revoked]
            for name, person in inventory.people.items()}


def container_people_keys(inventory: Inventory, spec, people: dict[str, list]) -> list:
    """The keys of the people in a container's `users`."""
    return [key for user in spec.users for key in people[user]]


def check_keys(inventory: Inventory, **_) -> None:
    wanted_keys(inventory)
    people_keys(inventory)


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
    people = people_keys(c.inventory)
    record_file = f.file(PEOPLE_KEYS)
    recorded = authorized_keys.parse_people_record(record_file.text, PEOPLE_KEYS) if record_file.exists else {}
    installed = {}  # container -> the people's keys it holds after this step
    for name, inside in c.running_containers():
        targets.append((name, CONTAINER_AUTHORIZED_KEYS, inside.file(CONTAINER_AUTHORIZED_KEYS),
                        inside.file("/root/.ssh"), "root"))
        installed[name] = container_people_keys(c.inventory, c.host.containers[name], people)
    actions, notes = c.once_running(lambda name: f"write {CONTAINER_AUTHORIZED_KEYS} with the {len(add)} key(s)"), []
    for container, path, current, ssh_dir, owner in targets:
        where = f"{container}: " if container else ""
        wanted, gone = add, revoke
        if container:  # its users' keys too; a person's key the tool put there earlier and no one wants now goes
            wanted, gone = authorized_keys.container_keys(add, installed[container], revoke,
                                                          recorded.get(container, []))
        change, problems = key_change(path, current, wanted, gone, owner=owner, group=owner)
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
    record = FileChange(PEOPLE_KEYS, record_file, authorized_keys.render_people_record(
        {**{n: k for n, k in recorded.items() if n in c.host.containers and n not in installed}, **installed}).encode())
    if record.needed and (record_file.exists or any(installed.values())):
        actions.append(Action(f"record the people's keys in each container in {PEOPLE_KEYS}",
                              lambda c: apply_file(c.session, record), diff=record.diff()))
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
    """Make authorized_keys on hosts, in containers and of the forwarding account hold exactly the inventory's keys."""
    c.run_steps([KEYS, FORWARD])


# --- the forwarding-only account: how a person reaches their container without a shell on the server ---

SSHD = "/usr/sbin/sshd"


def sshd_dump(c, account: str) -> dict[str, list[str]]:
    """sshd's effective settings for a login of `account` (`sshd -T -C ...`), parsed."""
    done = c.run([SSHD, "-T", "-C", f"user={account},host=localhost,addr=127.0.0.1"], sudo=True, check=False)
    if done.exit_code != 0:
        raise FleetError(f"`sshd -T` exited {done.exit_code}: {done.stderr.strip()[-300:]}")
    return forwarding.parse_sshd_dump(done.stdout)


def forwarded_ports(host) -> dict[str, list[int]]:
    """Pure: person -> the SSH ports of their containers on this host."""
    ports: dict[str, list[int]] = {}
    for spec in host.containers.values():
        for user in spec.users:
            ports.setdefault(user, []).append(spec.ssh_port)
    return ports


def check_and_reload_sshd(c, drop_in: FileChange, account: str) -> None:
    """`sshd -t` of the whole configuration with the new drop-in; the old one put back if it fails; then
    sshd reloads (open sessions stay) and its settings for the account are checked."""
    test = c.run([SSHD, "-t"], sudo=True, check=False)
    if test.exit_code != 0:
        undo = (["mv", "-f", "-T", "--", drop_in.path + BACKUP_SUFFIX, drop_in.path] if drop_in.current.exists
                else ["rm", "-f", "--", drop_in.path])
        c.run(undo, sudo=True)
        raise ValidationFailed(drop_in.path, f"{SSHD} -t", test.stderr or test.stdout)
    c.run(["sh", "-c", 'kill -HUP "$(cat /run/sshd.pid)"'], sudo=True)
    dump = sshd_dump(c, account)
    # the next connection (this run's next host step, the next run) must not meet sshd between its sockets
    c.run(["bash", "-c", forwarding.sshd_answers_script(*forwarding.sshd_listener(dump))], sudo=True)
    problems = forwarding.forwarding_problems(dump, account)
    if problems:
        raise FleetError(f"sshd will not let {account} forward: {'; '.join(problems)}")


def plan_forward(c) -> Plan:
    """The forwarding-only account: created once, its authorized_keys (root's file) holding each person's
    keys limited to their own containers' ports, and the sshd drop-in that lets it in for that alone."""
    host = c.host
    if host.is_local:
        return Plan.ok("a local host: its containers are reached on this machine's loopback")
    ports = forwarded_ports(host)
    account = host.forward_user
    f = c.facts()
    home = f.homes.get(account)
    if home is None and not ports:
        return Plan.ok("no container here lists users: no forwarding account")
    if home is not None and home != FORWARD_HOME:
        raise FleetError(f"user {account} exists with home {home}: it is not gpufleet's forwarding account "
                         f"(set forward_user to another name)")
    people = people_keys(c.inventory)
    actions = []
    if home is None:
        create = ["useradd", "--system", "--no-create-home", "--home-dir", FORWARD_HOME, "--shell",
                  forwarding.NOLOGIN, "--password", "*", "--comment", "gpufleet forwarding only", account]
        home_dir = ["install", "-d", "-m", "0755", "-o", "root", "-g", "root", "--", FORWARD_HOME, f"{FORWARD_HOME}/.ssh"]
        def create_account(c) -> None:
            c.run(create, sudo=True)
            c.run(home_dir, sudo=True)
        actions.append(Action(f"create the forwarding-only account {account} (no password, {forwarding.NOLOGIN} "
                              f"shell, home {FORWARD_HOME} owned by root)", create_account))
    keys_file = FileChange(FORWARD_AUTHORIZED_KEYS, f.file(FORWARD_AUTHORIZED_KEYS), forwarding.authorized_keys(
        {person: (people[person], person_ports) for person, person_ports in ports.items()}).encode(),
        mode="0644", parent_mode="0755")
    if keys_file.needed:
        actions.append(file_action(keys_file))
    dump = sshd_dump(c, account)
    drop_in = FileChange(SSHD_DROP_IN, f.file(SSHD_DROP_IN), forwarding.sshd_drop_in(
        account, forwarding.others_in_allow_users(dump, account)).encode(), mode="0644")
    if drop_in.needed:
        actions += [file_action(drop_in),
                    Action("check sshd's configuration (sshd -t) and reload it",
                           lambda c: check_and_reload_sshd(c, drop_in, account))]
    elif home is not None:
        problems = forwarding.forwarding_problems(dump, account)
        if problems:
            raise FleetError(f"sshd will not let {account} forward: {'; '.join(problems)}")
    if not actions:
        return Plan.ok(f"{account} forwards {', '.join(sorted(ports)) or 'no one'} to their own containers only")
    return Plan.change(*actions)


FORWARD = Step("keys.forward", plan_forward)
