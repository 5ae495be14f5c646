"""NVIDIA Container Toolkit: only where a GPU is present.

The runtime is registered by docker.configure's daemon.json merge (the single
owner of that file); `nvidia-ctk runtime configure` is never run.
"""
from invoke import Collection, task

from gpufleet.errors import FleetError
from gpufleet.fleet import fleet_task
from gpufleet.files import FileChange, file_action, render_template
from gpufleet.paths import NVIDIA_KEYRING, NVIDIA_SOURCES
from gpufleet.plan import Action, Plan, Step
from tasks import HOST_TASK_HELP
from tasks.docker import CONFIGURE, apt_install, fetch_key

TOOLKIT = "nvidia-container-toolkit"


def sources_file(mirror: str) -> bytes:
    return render_template("nvidia-container-toolkit.list.j2", keyring=NVIDIA_KEYRING, mirror=mirror).encode()


def plan_toolkit(c) -> Plan:
    f = c.facts()
    if not f.has_gpu:
        return Plan.skipped("no NVIDIA GPU")
    if f.gpu_source != "nvidia-smi":
        raise FleetError(f"an NVIDIA GPU is present ({f.gpus[0]}) but nvidia-smi does not work: "
                         "install the NVIDIA driver first, then re-run")
    mirror = c.host.nvidia_mirror
    actions = []
    if not f.file(NVIDIA_KEYRING).exists:
        url = f"{mirror}/gpgkey"
        actions.append(Action(f"fetch NVIDIA's signing key from {url} to {NVIDIA_KEYRING}",
                              lambda c: c.run(fetch_key(url, NVIDIA_KEYRING), sudo=True)))
    change = FileChange(NVIDIA_SOURCES, f.file(NVIDIA_SOURCES), sources_file(mirror))
    if change.needed:
        actions.append(file_action(change))
    if TOOLKIT not in f.packages or change.needed:
        actions.append(Action(f"install {TOOLKIT} from {mirror}", lambda c: c.run(apt_install([TOOLKIT]), sudo=True)))
    if not actions:
        return Plan.ok(f"{TOOLKIT} {f.packages[TOOLKIT]} installed for {len(f.gpus)} GPU(s), driver {f.gpu_driver}")
    return Plan.change(*actions)


TOOLKIT_STEP = Step("nvidia.toolkit", plan_toolkit)


@task(help=HOST_TASK_HELP)
@fleet_task()
def install(c, dry_run=False, json=None):
    """Install the NVIDIA Container Toolkit where a GPU is present and register the runtime."""
    c.run_steps([TOOLKIT_STEP, CONFIGURE])


ns = Collection("nvidia", install)
