"""Inventory tasks: show what a host will get, and where each value came from."""
from datetime import datetime

from invoke import task
from invoke.exceptions import Exit
from gpufleet.output import make_console
from rich.table import Table
from rich.text import Text

from gpufleet import gpu_assign, inventory as inv
from gpufleet.connect import Connector
from gpufleet.errors import FleetError
from gpufleet.executor import close_within, open_session
from gpufleet.fleet import load_inventory
from gpufleet.paths import probe_request
from gpufleet.plan import HostContext


def server_gpus(inventory, name: str) -> list[tuple[str, str]]:
    """[(container, the physical GPUs it gets)] read from the server: its facts and GPU record (one probe)."""
    from .containers import gpu_assignment, gpu_devices
    connector = Connector(inventory)
    log_dir = inventory.run.log_dir / datetime.now().strftime("%Y%m%d-%H%M%S-%f-show-host")
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    session = open_session(connector, name, log_dir / f"{name}.log", None)
    try:
        session.open()
        ctx = HostContext(inventory.host(name), inventory, session)
        ctx.probe_request = probe_request
        wanted = gpu_assignment(ctx)
        devices = gpu_devices(ctx.facts())
        return [(cname, "none" if value == "none" else
                 gpu_assign.describe([d.uuid for d in devices if not d.mig] if value == "all" else value, devices))
                for cname, value in wanted.items()]
    finally:
        close_within([session.close, connector.close], seconds=2)


@task(help={"name": "the host's name in the inventory",
            "gpus": "also ask the server which physical GPUs (index, model, UUID) each container gets"})
def show_host(c, name, gpus=False):
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
    if gpus:
        try:
            for cname, physical in server_gpus(inventory, name):
                table.add_row(Text(f"containers.{cname}.gpus on the server"), Text(physical),
                              Text(f"{name}'s nvidia-smi and {gpu_assign.GPU_RECORD}"))
        except FleetError as e:
            make_console().print(table, soft_wrap=False)
            raise Exit(f"error: {name}: {e}", code=1) from None
    make_console().print(table, soft_wrap=False)
