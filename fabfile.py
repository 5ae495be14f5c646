"""gpufleet: GPU servers from bare Ubuntu/Debian to a ready deep-learning environment.

`fab --list` shows every task; `fab -H gpu1,gpu2 bootstrap` runs the whole recipe.
Host tasks run in parallel (see fabric.yaml and gpufleet/executor.py).
"""
from invoke import Collection, task

from gpufleet.executor import fleet_task
from tasks import HOST_TASK_HELP, apt, docker, hosts, lab, nvidia

HOST_STAGES = [apt.PROXY, docker.INSTALL, docker.SERVICE, nvidia.TOOLKIT_STEP, docker.CONFIGURE, docker.USERS]
BOOTSTRAP = HOST_STAGES


@task(help=HOST_TASK_HELP)
@fleet_task()
def bootstrap(c, dry_run=False, json=None):
    """Take hosts from bare to ready: Docker, daemon.json, toolkit, docker group, containers, sshd."""
    c.run_steps(BOOTSTRAP)


ns = Collection(bootstrap, hosts.show_host)
for stage in (apt, docker, nvidia, lab):
    ns.add_collection(stage.ns)
