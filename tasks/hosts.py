"""Inventory tasks: show what a host will get, and where each value came from."""
from invoke import task
from gpufleet.output import make_console
from rich.table import Table
from rich.text import Text

from gpufleet import inventory as inv
from gpufleet.fleet import load_inventory


@task(help={"name": "the host's name in the inventory"})
def show_host(c, name):
    """Print one host's merged settings and where each value came from."""
    inventory = load_inventory()
    host = inventory.host(name)
    chain = " -> ".join(h.name for h in inventory.jump_chain(name)) or "direct"
    where = (f"this machine, as {host.user}, no SSH" if host.is_local
             else f"{host.user}@{host.address}:{host.port}, via {chain}")
    table = Table(title=f"{name}  ({where})  from {inventory.path}", title_justify="left")
    for column in ("key", "value", "from"):
        table.add_column(column)
    for key, value, source in inv.describe(host):
        table.add_row(Text(key), Text(value), Text(source))
    make_console().print(table, soft_wrap=False)
