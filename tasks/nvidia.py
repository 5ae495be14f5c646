"""NVIDIA Container Toolkit: where a GPU is present (nvidia_toolkit = "auto"), everywhere ("always"), or nowhere.

The runtime is registered by docker.configure's daemon.json merge (the single
owner of that file); `nvidia-ctk runtime configure` is never run.
"""
from invoke import Collection, task

from gpufleet import apt_repo
from gpufleet.errors import FleetError
from gpufleet.fleet import fleet_task
from gpufleet.plan import Plan, Step
from . import HOST_TASK_HELP
from .docker import CONFIGURE

TOOLKIT = "nvidia-container-toolkit"


def plan_toolkit(c) -> Plan:
    f = c.facts()
    setting = c.host.nvidia_toolkit
    if setting == "never":
        return Plan.skipped("nvidia_toolkit = never")
    if setting == "auto":
        if not f.has_gpu:
            return Plan.skipped("no NVIDIA GPU (nvidia_toolkit = auto)")
        if f.gpu_source != "nvidia-smi":
            raise FleetError(f"an NVIDIA GPU is present ({f.gpus[0]}) but nvidia-smi does not work: "
                             "install the NVIDIA driver first, then re-run")
    repo = apt_repo.nvidia_toolkit_repo(c.host.nvidia_mirror, c.host.nvidia_key_fingerprint)
    actions = apt_repo.plan_repo_packages(repo, f, [TOOLKIT])
    if actions:
        return Plan.change(*actions)
    if f.gpu_source == "nvidia-smi":
        return Plan.ok(f"{TOOLKIT} {f.packages[TOOLKIT]} installed for {len(f.gpus)} GPU(s), driver {f.gpu_driver}")
    return Plan.ok(f"{TOOLKIT} {f.packages[TOOLKIT]} installed (nvidia_toolkit = always; no working GPU seen)")


TOOLKIT_STEP = Step("nvidia.toolkit", plan_toolkit)


@task(help=HOST_TASK_HELP)
@fleet_task()
def install(c, dry_run=False, json=None):
    """Install the NVIDIA Container Toolkit (where a GPU is present, or as nvidia_toolkit says) and register the runtime."""
    c.run_steps([TOOLKIT_STEP, CONFIGURE])


ns = Collection("nvidia", install)
