"""apt on the host: the optional apt proxy every later install goes through."""
from invoke import Collection, task

from gpufleet.fleet import fleet_task
from gpufleet.files import FileChange, file_plan, removal_action, render_template
from gpufleet.paths import APT_PROXY_CONF
from gpufleet.plan import Plan, Step
from . import HOST_TASK_HELP


def proxy_file(proxy: str) -> bytes:
    return render_template("apt-proxy.conf.j2", proxy=proxy, https=False).encode()


def plan_proxy(c) -> Plan:
    current = c.facts().file(APT_PROXY_CONF)
    proxy = c.host.apt_proxy
    if not proxy:
        if current.exists:
            return Plan.change(removal_action(APT_PROXY_CONF, current, "apt_proxy is no longer set"))
        return Plan.ok("no apt proxy configured")
    return file_plan(FileChange(APT_PROXY_CONF, current, proxy_file(proxy)), f"apt proxy already {proxy}")


PROXY = Step("apt.proxy", plan_proxy)


@task(help=HOST_TASK_HELP)
@fleet_task()
def proxy(c, dry_run=False, json=None):
    """Write (or remove) the host's apt proxy setting."""
    c.run_steps([PROXY])


ns = Collection("apt", proxy)
