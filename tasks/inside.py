"""Inside each container: apt mirror for its own release, common tools, git identity and GitHub access."""
from __future__ import annotations

import configparser
import shlex

from invoke import Collection, task

from gpufleet import apt_sources, osinfo
from gpufleet.errors import FleetError
from gpufleet.fleet import fleet_task
from gpufleet.files import TEMPLATES, FileChange, file_action, in_container
from gpufleet.paths import (APT_PROXY_CONF, CONTAINER_APT_SOURCES, CONTAINER_DEPLOY_KEY as DEPLOY_KEY, CONTAINER_GITCONFIG,
                            CONTAINER_KNOWN_HOSTS)
from gpufleet.plan import Action, Plan, Step
from gpufleet.remote import Script
from . import HOST_TASK_HELP
from gpufleet.container_changes import tracks_tool_writes
from .apt import proxy_file
from .docker import apt_install

GITHUB_KNOWN_HOSTS = (TEMPLATES / "github_known_hosts").read_text()


def plan_apt_mirror(c) -> Plan:
    where = c.host.apt_mirror or "the official archive"
    proxy = f" through {c.host.apt_proxy}" if c.host.apt_proxy else ""
    actions, fine = c.once_running(lambda name: f"point apt at {where}{proxy} for the release of "
                                                f"{c.host.containers[name].image}"), []
    for name, inside in c.running_containers():
        before = len(actions)
        if c.host.apt_proxy:
            proxy = FileChange(APT_PROXY_CONF, inside.file(APT_PROXY_CONF), proxy_file(c.host.apt_proxy))
            if proxy.needed:
                actions.append(file_action(proxy, container=name))
        os_release = osinfo.parse_os_release(inside.file("/etc/os-release").text)
        path, text = apt_sources.render_sources(os_release, c.host.apt_mirror or None, arch=c.facts().arch)
        current = inside.file(path)
        if current.exists:
            apt_sources.check_text(current.content, f"{name}:{path}")
        change = FileChange(path, current, text.encode(), keep_original=True)
        if change.needed:
            actions.append(file_action(change, container=name))
        for other in CONTAINER_APT_SOURCES:
            if other != path and inside.file(other).exists and apt_sources.mirrors_in(inside.file(other).text):
                argv = ["mv", "-f", other, other + ".gpufleet.orig"]
                actions.append(Action(f"set aside {other} in {name} (kept as {other}.gpufleet.orig)",
                                      lambda c, n=name, a=argv: c.run(in_container(n, a), sudo=True)))
        if len(actions) == before:
            fine.append(f"{name} ({os_release.pretty_name or os_release.id})")
    return Plan.change(*actions) if actions else Plan.ok(
        f"apt in {', '.join(fine) or 'no container'} uses {where}{proxy}")


def plan_tools(c) -> Plan:
    """openssh-server and the inventory's tools: the missing ones, in one apt transaction per container,
    without recommended packages (as images are built: openssh-server's would bring systemd and dbus)."""
    packages = ["openssh-server"] + [t for t in c.host.tools if t != "openssh-server"]
    actions, fine = c.once_running(lambda name: f"install those of {' '.join(packages)} that "
                                                f"{c.host.containers[name].image} lacks"), []
    for name, inside in c.running_containers():
        # an image may ship sshd without dpkg knowing (built from source, copied in): then it needs no package
        wanted = ([] if inside.sshd_installed else ["openssh-server"]) + [t for t in c.host.tools if t != "openssh-server"]
        missing = [p for p in wanted if p not in inside.packages]
        if missing:
            actions.append(Action(f"install {' '.join(missing)} in {name}",
                                  lambda c, n=name, m=missing: c.run(in_container(n, apt_install(m, recommends=False)), sudo=True, kind="install")))
        else:
            fine.append(name)
    return Plan.change(*actions) if actions else Plan.ok(f"{', '.join(c.host.tools)} installed in {', '.join(fine) or 'no container'}")


def git_identity(text: str) -> dict[str, str]:
    """Pure: user.name / user.email from a .gitconfig (other settings are the user's)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return {}
    return {f"user.{k}": v for k, v in (parser["user"].items() if parser.has_section("user") else [])
            if k in ("name", "email")}


def known_hosts_with_github(text: str) -> str:
    """Pure: the user's known_hosts with GitHub's published keys present exactly once."""
    lines = text.splitlines()
    wanted = GITHUB_KNOWN_HOSTS.splitlines()
    missing = [w for w in wanted if w not in lines]
    if not missing:
        return text
    prefix = text if not text or text.endswith("\n") else text + "\n"
    return prefix + "\n".join(missing) + "\n"


def plan_git(c) -> Plan:
    notes = []
    wanted = {k: v for k, v in (("user.name", c.host.git_name), ("user.email", c.host.git_email)) if v}
    to_do = [f"git config --global {k} {v!r}" for k, v in wanted.items()] + ["pin github.com's host keys"]
    to_do += ["generate a GitHub deploy key"] if c.host.github_access == "deploy-key" else []
    actions = c.once_running(lambda name: ", ".join(to_do))
    for name, inside in c.running_containers():
        have = git_identity(inside.file(CONTAINER_GITCONFIG).text)
        for key, value in wanted.items():
            if have.get(key) != value:
                if "git" not in inside.packages:
                    raise FleetError(f"git is not installed in {name}: add it to tools")
                actions.append(Action(f"git config --global {key} {value!r} in {name}",
                                      lambda c, n=name, k=key, v=value: c.run(
                                          in_container(n, ["git", "config", "--global", "--", k, v]), sudo=True)))
        current = inside.file(CONTAINER_KNOWN_HOSTS)
        new = known_hosts_with_github(current.text if current.exists else "")
        change = FileChange(CONTAINER_KNOWN_HOSTS, current, new.encode(), mode="0644")
        if change.needed:
            actions.append(file_action(change, container=name))
        if c.host.github_access == "deploy-key":
            public = inside.file(DEPLOY_KEY + ".pub")
            if public.exists:
                notes.append(f"{name} deploy key (add it to GitHub): {public.text.strip()}")
            else:
                actions.append(Action(f"generate a GitHub deploy key in {name}",
                                      lambda c, n=name: ensure_deploy_key(c, n)))
        elif c.host.github_access == "agent":
            notes.append(f"{name}: GitHub through agent forwarding (ForwardAgent in the generated ssh config)")
    if actions:
        return Plan.change(*actions)
    return Plan.ok("git identity and github.com host keys in place" + (f"; {'; '.join(notes)}" if notes else ""))


def ensure_deploy_key(c, name: str) -> str:
    """Generate a per-container ed25519 key inside the container (never copied from the workstation)."""
    script = Script(
        f"set -e; mkdir -p -m 700 /root/.ssh; [ -f {DEPLOY_KEY} ] || ssh-keygen -q -t ed25519 -N '' "
        f"-C {shlex.quote('gpufleet-deploy-' + name)} -f {DEPLOY_KEY}; "
        f"grep -q 'IdentityFile {DEPLOY_KEY}' /root/.ssh/config 2>/dev/null || "
        f"printf 'Host github.com\\n    IdentityFile {DEPLOY_KEY}\\n' >> /root/.ssh/config; cat {DEPLOY_KEY}.pub")
    public = c.run(in_container(name, script), sudo=True).stdout.strip()
    return f"{name} deploy key (add it to GitHub): {public}"


APT_MIRROR = Step("inside.apt-mirror", tracks_tool_writes(plan_apt_mirror))
TOOLS = Step("inside.tools", tracks_tool_writes(plan_tools))
GIT = Step("inside.git", tracks_tool_writes(plan_git))


@task(name="apt-mirror", help=HOST_TASK_HELP)
@fleet_task()
def apt_mirror(c, dry_run=False, json=None):
    """Point apt inside each container at the inventory's mirror for the container's own release."""
    c.run_steps([APT_MIRROR])


@task(help=HOST_TASK_HELP)
@fleet_task()
def tools(c, dry_run=False, json=None):
    """Install the inventory's common tools inside each container (only the missing ones)."""
    c.run_steps([APT_MIRROR, TOOLS])


@task(help=HOST_TASK_HELP)
@fleet_task()
def git(c, dry_run=False, json=None):
    """Set git user.name/email in each container and pin github.com's host keys."""
    c.run_steps([GIT])


ns = Collection("inside", apt_mirror, tools, git)
