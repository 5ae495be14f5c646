"""Marking host tasks, and finding the inventory; free of SSH imports so that the local
checks (doctor-local on a GPU box) need only Invoke."""
from __future__ import annotations

import atexit
import gc
from pathlib import Path

from gpufleet import inventory as inv


def fleet_task(default_hosts: str | None = None, before=None, after=None):
    """Mark a task body as run once per host with a HostContext (see tasks/).

    `before(inventory, **task_kwargs)` validates input before any host is contacted;
    `after(reports)` may print a summary and return the exit code.
    """
    def mark(body):
        body.fleet = True
        body.fleet_default_hosts = default_hosts
        body.fleet_before = before
        body.fleet_after = after
        return body
    return mark


def load_inventory() -> inv.Inventory:
    return inv.load(inv.inventory_path(project_dir=Path.cwd()))




def skip_last_collection() -> None:
    """Let the process end without the interpreter's last garbage collection: it walks every
    object Fabric, Paramiko and Rich made, about 0.1 s of a 0.7 s run.  The command logs are
    flushed line by line, so nothing is left in a buffer."""
    atexit.register(gc.freeze)


