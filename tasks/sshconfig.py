"""`fab gen-ssh-config`: one managed block in the workstation's ssh config.

The bastion, each server through its jump chain (ProxyJump), and each container
through its server at 127.0.0.1:PORT, with host keys pinned by HostKeyAlias in
the tool's known_hosts file.  The block goes first in the file, so its values win
for our aliases; everything outside it stays byte for byte, and Host/Match lines
of the user's that also match an alias are reported as warnings.  A local host
(`address = "local"`) gets no entry; its containers are reached at 127.0.0.1:PORT directly.
"""
from __future__ import annotations

import sys
from pathlib import Path

from invoke import task

from gpufleet import ssh_config
from gpufleet.connect import KnownHosts
from gpufleet.fleet import load_inventory
from gpufleet.files import unified_diff
from gpufleet.inventory import Inventory
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


def unpinned(inventory: Inventory, all_entries) -> list[str]:
    known = KnownHosts(inventory.local.known_hosts)
    return [e.alias for e in all_entries if not known.get(e.alias)]


@task(name="gen-ssh-config", help={"dry-run": "print the unified diff and write nothing"})
def gen_ssh_config(c, dry_run=False):
    """Write the managed block for every host and container at the top of [local] ssh_config."""
    inventory = load_inventory()
    path = inventory.local.ssh_config
    current = path.read_bytes() if path.exists() else b""
    all_entries = entries(inventory)
    new = ssh_config.update(current, ssh_config.render_block(all_entries), path=str(path))
    for warning in ssh_config.overlapping_sections(new, all_entries, str(path)):
        print(f"warning: {warning}", file=sys.stderr)
    if new == current:
        print(f"{path}: no changes ({len(all_entries)} entries)")
        return
    diff = unified_diff(str(path), current if path.exists() else None, new)
    if dry_run:
        sys.stdout.write(diff)
        print(f"dry run: {path} not written")
        return
    write_atomically(path, new, backup=True)
    sys.stdout.write(diff if len(diff) < 20000 else f"({diff.count(chr(10))} diff lines)\n")
    print(f"{path}: wrote {len(all_entries)} entries (backup: {path}{BACKUP_SUFFIX})")
    missing = unpinned(inventory, all_entries)
    if missing:
        print(f"note: no pinned host key yet for {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}; "
              f"run bootstrap (it pins keys as it connects) before using these aliases")
