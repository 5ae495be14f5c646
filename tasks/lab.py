"""The local lab: a bastion, GPU-less servers, an apt proxy, a registry mirror and a package mirror
on the local Docker engine.

Local tasks (no hosts). Settings live under `lab` in the Invoke config
(`dir`, `prefix`, `subnet`); the work is done by the checkout's `lab` package, which is
not part of what a user installs: it is imported only when a lab task runs.
"""
from pathlib import Path

from invoke import Collection, task
from invoke.exceptions import Exit
from rich.console import Console
from rich.table import Table

from gpufleet.errors import FleetError

REPO = Path(__file__).resolve().parent.parent


def lab_errors() -> tuple:
    """What a lab task reports in one line; the Docker SDK is imported only when a lab task fails."""
    import docker.errors
    return (FleetError, docker.errors.DockerException)


def _console() -> Console:
    return Console(highlight=False)


def _lab(c, console: Console | None = None):
    try:
        from lab.topology import Lab
    except ImportError as e:
        raise Exit(f"the lab needs the checkout's lab/ package and the Docker SDK "
                   f"(pip install -e '.[lab]'): {e}", code=1) from None
    settings = c.config.get("lab", {})
    directory = Path(settings.get("dir", ".lab"))
    given = {key: settings[key] for key in ("prefix", "subnet") if settings.get(key)}
    return Lab(directory if directory.is_absolute() else REPO / directory, **given,
               log=(lambda line: console.print(f"  {line}", style="dim")) if console else None)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@task(auto_shortflags=False,  # -h stays --help
      help={"hosts": "how many servers, default 4: gpu1 Debian 12 with systemd, gpu2 Debian 12 without, "
                     "gpu3 Debian 13 with systemd (docker-ce 26), gpu4 Debian 13 with systemd (docker-ce 29); "
                     "then the same again"})
def up(c, hosts=None):
    """Bring up the local lab (or reconcile it) and write .lab/hosts.toml."""
    console = _console()
    lab = _lab(c, console)
    try:
        info = lab.up(**({"hosts": int(hosts)} if hosts else {}))
    except lab_errors() as e:
        raise Exit(f"lab.up: {e}", code=1) from None
    console.print(f"lab {info.prefix} is up in {info.seconds:.0f}s: bastion on 127.0.0.1:{info.bastion_port}, "
                  f"servers {', '.join(info.servers)}, mirror serving {info.image}")
    console.print(f"package mirror: {info.repos.docker_mirror}"
                  + (f" and {info.repos.nvidia_mirror}" if info.repos.nvidia_mirror else
                     " (no NVIDIA repo: ../shared/gpu-stack is not there)") + f", from {info.mirror_tree}")
    if info.built_images:
        console.print(f"built {', '.join(info.built_images)}")
    console.print(f"inventory: {_shown(info.inventory)}")
    console.print(f"FABRIC_INVENTORY={_shown(info.inventory)} fab -H {','.join(info.servers)} bootstrap")


@task
def status(c):
    """Show the lab's containers, their roles, states and addresses."""
    lab = _lab(c)
    try:
        members = lab.status()
    except lab_errors() as e:
        raise Exit(f"lab.status: {e}", code=1) from None
    if not members:
        _console().print(f"lab {lab.prefix} is down (no containers); `fab lab.up` starts it")
        return
    table = Table(title=f"lab {lab.prefix} ({lab.subnet})", title_justify="left")
    for column in ("name", "role", "state", "address"):
        table.add_column(column)
    for member in members:
        table.add_row(*member)
    _console().print(table)


@task(help={"purge": "also remove the apt cache volume and the lab's keys, inventory and known_hosts"})
def down(c, purge=False):
    """Remove the lab's containers, network and volumes (the apt cache stays unless --purge)."""
    lab = _lab(c)
    try:
        removed = lab.down(purge=purge)
    except lab_errors() as e:
        raise Exit(f"lab.down: {e}", code=1) from None
    console = _console()
    for thing in removed:
        console.print(f"  removed {thing}", style="dim")
    kept = "" if purge else f"; kept the apt cache volume {lab.apt_cache_volume} (--purge removes it)"
    console.print(f"lab {lab.prefix} is down{kept}")


ns = Collection("lab", up, status, down)
# prefix and subnet default to the lab's own (gpufleet-lab, 10.77.10.0/24)
ns.configure({"lab": {"dir": ".lab", "prefix": "", "subnet": ""}})
