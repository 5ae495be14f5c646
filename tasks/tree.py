"""The task tree: every stage's namespace and `bootstrap`, the whole recipe in order.

Loaded by the checkout's fabfile (`fab`) and by the installed `gpufleet` command alike.
"""
from pathlib import Path

from invoke import Collection, task

from gpufleet.fleet import fleet_task
from . import HOST_TASK_HELP, apt, containers, docker, doctor, hosts, inside, keys, lab, nvidia, ops, sshconfig  # noqa: E501

BOOTSTRAP = [
    apt.PROXY, docker.INSTALL, docker.SERVICE, nvidia.TOOLKIT_STEP, docker.CONFIGURE, docker.CONTAINERD,
    nvidia.CDI_STEP, docker.USERS, *containers.UP, keys.KEYS, keys.FORWARD, inside.GIT,
]


@task(help=HOST_TASK_HELP)
@fleet_task(before=keys.check_keys)
def bootstrap(c, dry_run=False, json=None):
    """Take hosts from bare to ready: Docker, daemon.json, toolkit, group, containers, sshd, keys, tools."""
    c.run_steps(BOOTSTRAP)


ns = Collection(bootstrap, keys.sync_keys, sshconfig.gen_ssh_config, hosts.show_host, doctor.doctor,
                doctor.doctor_local)
for stage in (apt, docker, nvidia, containers, inside, ops):
    ns.add_collection(stage.ns)
# the lab's tasks drive the checkout's lab/ package, which the installed tool does not have
if (Path(__file__).resolve().parent.parent / "lab" / "topology.py").is_file():
    ns.add_collection(lab.ns)
