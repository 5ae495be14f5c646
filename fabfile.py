"""gpufleet: GPU servers from bare Ubuntu/Debian to a ready deep-learning environment.

`fab --list` shows every task; `fab -H gpu1,gpu2 bootstrap` runs the whole recipe.
Host tasks run in parallel (see fabric.yaml and gpufleet/executor.py).
"""
import sys

# Invoke stops Python writing .pyc files while it loads a fabfile, so every module of this
# project would be compiled from source on each run (about 0.1 s); `python -B` and
# PYTHONDONTWRITEBYTECODE still win.
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)

from gpufleet.cli import exit_on_interrupt  # noqa: E402

exit_on_interrupt()  # before the project's modules load (`gpufleet` installs it before Fabric's)

from invoke import Collection, task  # noqa: E402

from gpufleet.fleet import fleet_task, skip_last_collection  # noqa: E402
from tasks import HOST_TASK_HELP, apt, containers, docker, doctor, hosts, inside, keys, lab, nvidia, ops, sshconfig  # noqa: E402,E501

skip_last_collection()

BOOTSTRAP = [
    apt.PROXY, docker.INSTALL, docker.SERVICE, nvidia.TOOLKIT_STEP, docker.CONFIGURE, docker.USERS,
    *containers.UP, keys.KEYS, inside.GIT,
]


@task(help=HOST_TASK_HELP)
@fleet_task(before=keys.check_keys)
def bootstrap(c, dry_run=False, json=None):
    """Take hosts from bare to ready: Docker, daemon.json, toolkit, group, containers, sshd, keys, tools."""
    c.run_steps(BOOTSTRAP)


ns = Collection(bootstrap, keys.sync_keys, sshconfig.gen_ssh_config, hosts.show_host, doctor.doctor,
                doctor.doctor_local)
for stage in (apt, docker, nvidia, containers, inside, ops, lab):
    ns.add_collection(stage.ns)
