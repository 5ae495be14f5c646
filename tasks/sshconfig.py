"""`fab gen-ssh-config`: one managed block in the workstation's ssh config.

The bastion, each server through its jump chain (ProxyJump), and each container
through its server at 127.0.0.1:PORT, with host keys pinned by HostKeyAlias in
the tool's known_hosts file.  The block goes first in the file, so its values win
for our aliases; everything outside it stays byte for byte, and Host/Match lines
of the user's that also match an alias are reported as warnings.  A local host
(`address = "local"`) gets no entry; its containers are reached at 127.0.0.1:PORT directly.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from invoke import task

from gpufleet import ssh_config, vscode_settings
from gpufleet.connect import KnownHosts
from gpufleet.fleet import load_inventory
from gpufleet.files import unified_diff
from gpufleet.errors import InputError
from gpufleet.inventory import Host, Inventory
from gpufleet.local_files import BACKUP_SUFFIX, write_atomically


def entries(inventory: Inventory) -> list[ssh_config.SshHostEntry]:
    """The ssh config entries for every host and container in the inventory."""
    identity = str(inventory.local.identity) if inventory.local.identity else None
    known = str(inventory.local.known_hosts)
    out = []
    for host in inventory.hosts.values():
        # this machine needs no entry; its containers are on its own loopback
        if not host.is_local:
            out.append(ssh_config.SshHostEntry(
                alias=host.name, hostname=host.address, port=host.port, user=host.user, identity_file=identity,
                proxy_jump=host.jump, host_key_alias=host.name, known_hosts_file=known, forward_agent=False))
        for spec in host.containers.values():
            out.append(ssh_config.SshHostEntry(
                alias=inventory.container_alias(host.name, spec.name), hostname="127.0.0.1", port=spec.ssh_port,
                user="root", identity_file=identity, proxy_jump=None if host.is_local else host.name,
                host_key_alias=inventory.container_alias(host.name, spec.name), known_hosts_file=known,
                forward_agent=host.forward_agent))
    return out


def person_entries(inventory: Inventory, name: str) -> list[ssh_config.SshHostEntry]:
    """The entries one person needs, and no other person's hosts: their containers, each container's server
    as the forwarding-only account, and the jump hosts on the way as the person's own login there."""
    if name not in inventory.people:
        raise InputError(f"{inventory.path}: people: unknown person {name!r} (add a [people.{name}] table)")
    person = inventory.people[name]
    identity = person.identity or None
    known = person.known_hosts
    hosts: list[tuple[Host, str]] = []  # (host, user to log in as), jump hosts first
    containers = []
    for host in inventory.hosts.values():
        mine = [spec for spec in host.containers.values() if name in spec.users]
        if not mine:
            continue
        if not host.is_local:
            hosts += [(jump, person.jump_user) for jump in inventory.jump_chain(host.name)]
            hosts.append((host, host.forward_user))
        containers += [(host, spec) for spec in mine]
    out, seen = [], set()
    for host, user in hosts:
        if host.name not in seen:
            seen.add(host.name)
            out.append(ssh_config.SshHostEntry(
                alias=host.name, hostname=host.address, port=host.port, user=user, identity_file=identity,
                proxy_jump=host.jump, host_key_alias=host.name, known_hosts_file=known, forward_agent=False))
    for host, spec in containers:
        alias = inventory.container_alias(host.name, spec.name)
        out.append(ssh_config.SshHostEntry(
            alias=alias, hostname="127.0.0.1", port=spec.ssh_port, user="root", identity_file=identity,
            proxy_jump=None if host.is_local else host.name, host_key_alias=alias, known_hosts_file=known,
            # root of a container shared with others could use a forwarded agent: only in one of one's own
            forward_agent=host.forward_agent and spec.users == (name,)))
    return out


def pinned_lines(inventory: Inventory, all_entries) -> str:
    """Pure but for reading the tool's known_hosts: the pinned keys of exactly these aliases, known_hosts lines."""
    known = KnownHosts(inventory.local.known_hosts)
    return "".join(f"{e.alias} {keytype} {blob}\n" for e in all_entries for keytype, blob in known.get(e.alias))


def write_person(inventory: Inventory, name: str, output: Path, dry_run: bool) -> None:
    """`--person NAME --output FILE`: FILE holds NAME's block alone, FILE.known_hosts their hosts' keys."""
    all_entries = person_entries(inventory, name)
    files = {output: ssh_config.render_block(all_entries).encode(),
             Path(f"{output}.known_hosts"): pinned_lines(inventory, all_entries).encode()}
    for path, new in files.items():
        current = path.read_bytes() if path.exists() else None
        if new == current:
            print(f"{path}: no changes")
            continue
        sys.stdout.write(unified_diff(str(path), current, new))
        if dry_run:
            print(f"dry run: {path} not written")
            continue
        write_atomically(path, new)
        pinned = len(new.splitlines())
        print(f"{path}: wrote {len(all_entries)} entries for {name}" if path == output else f"{path}: wrote "
              f"{pinned} pinned host key(s); it goes where [people.{name}] known_hosts says "
              f"({inventory.people[name].known_hosts})")


def unpinned(inventory: Inventory, all_entries) -> list[str]:
    known = KnownHosts(inventory.local.known_hosts)
    return [e.alias for e in all_entries if not known.get(e.alias)]


VSCODE_RECORD = "gpufleet_vscode_aliases.json"  # beside [local] known_hosts: which aliases we added where


def vscode_settings_path(inventory: Inventory, asked: bool) -> Path | None:
    """[local] vscode_settings, else with --vscode VS Code's own user settings.json on this system."""
    if inventory.local.vscode_settings:
        return inventory.local.vscode_settings
    if not asked:
        return None
    if sys.platform == "darwin":
        return Path.home() / "Library/Application Support/Code/User/settings.json"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData/Roaming")) / "Code/User/settings.json"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "Code/User/settings.json"


def read_vscode_record(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a record gpufleet wrote ({e}); remove it to start over") from None
    if not (isinstance(value, dict) and all(isinstance(v, list) and all(isinstance(a, str) for a in v)
                                            for v in value.values())):
        raise InputError(f"{path}: not a record gpufleet wrote; remove it to start over")
    return value


def update_vscode(inventory: Inventory, path: Path, aliases: list[str], dry_run: bool) -> None:
    """`"ALIAS": "linux"` in settings.json's remote.SSH.remotePlatform for each alias; the ones gpufleet added
    earlier and no longer writes are removed; every other byte stays."""
    record_path = inventory.local.known_hosts.parent / VSCODE_RECORD
    record = read_vscode_record(record_path)
    current = path.read_bytes() if path.exists() else b""
    try:
        text = current.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 (byte {e.start}); left untouched") from None
    new, owned = vscode_settings.set_remote_platforms(text, aliases, record.get(str(path), []), str(path))
    if new == text:
        print(f"{path}: no changes ({len(owned)} aliases set to linux by gpufleet)")
    else:
        sys.stdout.write(unified_diff(str(path), current if path.exists() else None, new.encode()))
        if dry_run:
            print(f"dry run: {path} not written")
            return
        # the record first names every alias that may be ours, so that a crash between the writes loses none
        union = sorted(set(record.get(str(path), [])) | set(owned))
        write_atomically(record_path, (json.dumps({**record, str(path): union}, indent=2) + "\n").encode())
        write_atomically(path, new.encode(), backup=path.exists())
        print(f"{path}: remote.SSH.remotePlatform has {len(owned)} aliases of gpufleet's"
              + (f" (backup: {path}{BACKUP_SUFFIX})" if current else ""))
    if record.get(str(path), []) != owned and not dry_run:
        write_atomically(record_path, (json.dumps({**record, str(path): owned}, indent=2) + "\n").encode())


@task(name="gen-ssh-config", help={"dry-run": "print the unified diff and write nothing",
                                    "person": "write only the block this [people.NAME] needs, to --output",
                                    "output": "with --person: the file to write (and FILE.known_hosts)",
                                    "vscode": "also set each alias's platform (linux) in VS Code's settings.json "
                                              "([local] vscode_settings, else VS Code's own)"})
def gen_ssh_config(c, dry_run=False, person=None, output=None, vscode=False):
    """Write the managed block for every host and container at the top of [local] ssh_config."""
    inventory = load_inventory()
    if person or output:
        if not (person and output):
            raise InputError("gen-ssh-config: --person and --output go together")
        write_person(inventory, person, Path(output), dry_run)
        return
    all_entries = write_block(inventory, dry_run)
    settings = vscode_settings_path(inventory, vscode)
    if settings:
        update_vscode(inventory, settings, [e.alias for e in all_entries], dry_run)


def write_block(inventory: Inventory, dry_run: bool) -> list[ssh_config.SshHostEntry]:
    """The managed block at the top of [local] ssh_config (a dry run prints the diff); returns its entries."""
    path = inventory.local.ssh_config
    current = path.read_bytes() if path.exists() else b""
    all_entries = entries(inventory)
    new = ssh_config.update(current, ssh_config.render_block(all_entries), path=str(path))
    for warning in ssh_config.overlapping_sections(new, all_entries, str(path)):
        print(f"warning: {warning}", file=sys.stderr)
    if new == current:
        print(f"{path}: no changes ({len(all_entries)} entries)")
        return all_entries
    diff = unified_diff(str(path), current if path.exists() else None, new)
    if dry_run:
        sys.stdout.write(diff)
        print(f"dry run: {path} not written")
        return all_entries
    write_atomically(path, new, backup=True)
    sys.stdout.write(diff if len(diff) < 20000 else f"({diff.count(chr(10))} diff lines)\n")
    print(f"{path}: wrote {len(all_entries)} entries (backup: {path}{BACKUP_SUFFIX})")
    missing = unpinned(inventory, all_entries)
    if missing:
        print(f"note: no pinned host key yet for {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}; "
              f"run bootstrap (it pins keys as it connects) before using these aliases")
    return all_entries
