"""Day-2 operations on the managed containers: ps, exec, shell, start/stop/restart,
snapshot, rm (never loses work) and restore; gpus, the fleet's GPUs in one table."""
from __future__ import annotations

import json as jsonlib
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from invoke import Collection, task
from invoke.exceptions import Exit
from gpufleet.output import make_console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gpufleet import gpu, gpu_view
from gpufleet.connect import Connector
from gpufleet.executor import close_within, open_session
from gpufleet.facts import ProbeOutputError, parse_file
from gpufleet.files import FileChange, apply_file
from gpufleet.plan import HostReport
from gpufleet.container_changes import CHANGED_FORMAT, changed_since, parse_snapshot_moments, mount_points, \
    read_user_changes
from gpufleet.errors import FleetError, InputError
from gpufleet.facts import PROBE_FUNCTIONS, split_sections
from gpufleet.fleet import fleet_task, load_inventory
from gpufleet.files import in_container
from gpufleet.plan import Action, Plan, Step
from gpufleet.remote import Script
from . import HOST_TASK_HELP
from .containers import SPEC_LABEL, oldest_first, recreate_from, snapshot, snapshot_repository

CONTAINER_HELP = {**HOST_TASK_HELP, "container": "container name (default: every managed container on the host)"}


def chosen(c, container: str | None) -> list[str]:
    names = list(c.host.containers)
    if container:
        if container not in names:
            raise FleetError(f"no container {container!r} on {c.name} in the inventory (have: {', '.join(names)})")
        return [container]
    return names


def snapshots_of(facts, name: str) -> list[dict]:
    """This container's snapshot images, oldest first (by the image's creation time)."""
    repo = snapshot_repository(name)
    return oldest_first([s for s in facts.snapshots if s.get("Repository") == repo])


def uptime(state: dict) -> str:
    if not state.get("Running"):
        return "-"
    started = datetime.fromisoformat(state["StartedAt"][:26].rstrip("Z") + "+00:00")
    seconds = int((datetime.now(timezone.utc) - started).total_seconds())
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h" if seconds >= 86400 else f"{seconds // 3600}h{seconds % 3600 // 60}m"


# --- ps ---

def orphans(c) -> list[str]:
    """Containers on this host that carry our label but that the inventory no longer names (never removed
    unless the user names them)."""
    return sorted(name for name in c.facts().containers if name not in c.host.containers)


def plan_ps(c) -> Plan:
    f = c.facts()
    rows = []
    for name in [*c.host.containers, *orphans(c)]:
        info = f.containers.get(name)
        snaps = snapshots_of(f, name)
        last = f"{snaps[-1]['Repository']}:{snaps[-1]['Tag']}" if snaps else "-"
        if info is None:
            rows.append([c.name, name, c.host.containers[name].image, "absent", "-", "-", "-", last])
            continue
        spec = jsonlib.loads((info["Config"].get("Labels") or {}).get(SPEC_LABEL) or "{}")
        ports = ", ".join(f"{b[0]['HostIp']}:{b[0]['HostPort']}->{p}" for p, b in
                          (info["HostConfig"].get("PortBindings") or {}).items() if b)
        sshd = f.inside.get(name)
        status = info["State"]["Status"] + (", sshd up" if sshd and sshd.sshd_running else "")
        if name not in c.host.containers:
            status = f"orphan ({status})"
        rows.append([c.name, name, info["Config"]["Image"], status, ports, spec.get("gpus", "?"),
                     uptime(info["State"]), last])
    c.report.data = rows
    found = orphans(c)
    return Plan.ok(f"{len(rows)} container(s)" + (f", {len(found)} orphan(s) not in the inventory: "
                                                   f"{', '.join(found)}" if found else ""))


def print_ps(reports) -> int | None:
    table = Table(title="Managed containers", title_justify="left")
    for column in ("host", "name", "image", "status", "ports", "GPUs", "uptime", "last snapshot"):
        table.add_column(column)
    for report in reports:
        for row in getattr(report, "data", None) or []:
            table.add_row(*(Text(str(cell)) for cell in row))
    make_console().print(table, soft_wrap=False)
    if any("orphan" in str(row[3]) for report in reports for row in getattr(report, "data", None) or []):
        print("orphan: labelled by gpufleet but no longer in the inventory; kept until you name it: "
              "fab -H HOST ops.rm --container NAME")
    return None


# --- start / stop / restart ---

def lifecycle_step(verb: str, container: str | None) -> Step:
    def plan(c) -> Plan:
        f = c.facts()
        actions = []
        for name in chosen(c, container):
            info = f.containers.get(name)
            if info is None:
                raise FleetError(f"container {name} does not exist on {c.name} (run bootstrap)")
            running = info["State"]["Running"]
            if (verb == "start" and running) or (verb == "stop" and not running):
                continue
            actions.append(Action(f"{verb} {name}", lambda c, n=name: lifecycle(c, verb, n)))
        return Plan.change(*actions) if actions else Plan.ok(f"already {'running' if verb == 'start' else 'stopped'}")
    return Step(f"ops.{verb}", plan)


def lifecycle(c, verb: str, name: str) -> None:
    c.run(["docker", verb, name], sudo=True)
    if verb != "stop":
        # the entrypoint starts sshd on every start; wait until it answers
        c.run(in_container(name, Script(
            "i=0; until [ -s /run/sshd.pid ] && kill -0 $(cat /run/sshd.pid) 2>/dev/null; do "
            "i=$((i+1)); [ $i -gt 50 ] && echo 'sshd did not start' >&2 && exit 1; sleep 0.2; done")), sudo=True)


# --- snapshot ---

def snapshot_step(container: str | None, pause: bool) -> Step:
    def plan(c) -> Plan:
        actions = [Action(f"snapshot {name} (docker commit{'' if pause else ', not paused'}; volumes are not in it)",
                          lambda c, n=name: take_snapshot(c, n, pause)) for name in chosen(c, container)]
        return Plan.change(*actions)
    return Step("ops.snapshot", plan)


def take_snapshot(c, name: str, pause: bool) -> str:
    """The same snapshot-and-prune a re-creation takes."""
    return snapshot(c, name, pause=pause)


# --- rm ---

def rm_step(container: str | None, force: bool) -> Step:
    def plan(c) -> Plan:
        f = c.facts()
        actions = []
        # an orphan (labelled, no longer in the inventory) only when named; never in "every container"
        names = [container] if container and container in orphans(c) else chosen(c, container)
        for name in names:
            if name not in f.containers:
                continue
            if not force:
                busy = gpu_work(c, name) if f.containers[name]["State"]["Running"] else ""
                if busy:
                    raise FleetError(f"not removing {name}: {busy}; stop them first, or pass --force")
                reasons = unsaved_work(c, name)
                if reasons:
                    raise FleetError(f"not removing {name}: {reasons}; run ops.snapshot first, or pass --force")
            actions.append(Action(f"remove container {name} (volumes and {name}'s host keys are kept)",
                                  lambda c, n=name: c.run(["docker", "rm", "-f", n], sudo=True)))
        return Plan.change(*actions) if actions else Plan.ok("nothing to remove")
    return Step("ops.rm", plan)


def gpu_check(name: str) -> Script:
    """One remote command: is there an nvidia-smi on the host, its compute processes (host PIDs), and the
    host PIDs of the container's processes."""
    top = shlex.join(["docker", "top", name, "-eo", "pid"])
    return Script(PROBE_FUNCTIONS + "\n".join([
        "sec smi_path sh -c 'command -v nvidia-smi'",
        f"sec smi {shlex.join(gpu.COMPUTE_APPS)}",
        f"sec top {top}"]) + "\n")


def gpu_work(c, name: str) -> str:
    """Why removing the running container `name` would kill GPU work, or "": asked of the host's nvidia-smi
    (inside a container it often lists no process) and mapped by host PID (see gpu.gpu_work_verdict)."""
    result = c.run(gpu_check(name), sudo=True, check=False)
    sections = split_sections(result.stdout)
    if "smi_path" not in sections:
        return f"cannot tell whether GPU processes run in it: the check gave no answer ({result.stderr.strip()[-200:]})"
    smi = sections.get("smi", (1, "no output from nvidia-smi"))
    return gpu.gpu_work_verdict(smi if sections["smi_path"][0] == 0 else None,
                                sections.get("top", (1, "no output from docker top")))


def unsaved_work(c, name: str) -> str:
    """Why removing `name` would lose files: changes since its last snapshot, or changes and no snapshot.

    Running or stopped, it is read on the server: the snapshots' moments from the engine, and the ctimes
    of the files in the container's upper layer (see container_changes.changed_since)."""
    tags = [f"{s['Repository']}:{s['Tag']}" for s in snapshots_of(c.facts(), name)]
    if not tags:
        changes = read_user_changes(c, name)
        shown = ", ".join(change.split(" ", 1)[1] for change in changes[:3]) + (", …" if len(changes) > 3 else "")
        return f"its filesystem has changes and it was never snapshotted ({shown})" if changes else ""
    moments = parse_snapshot_moments(c.run(["docker", "image", "inspect", "-f",
                                            "{{.Created}}\t{{json .Config.Labels}}", "--", *tags],
                                           sudo=True, check=False).stdout)
    driver, _, upper = c.run(["docker", "inspect", "-f", "{{.GraphDriver.Name}}\t{{.GraphDriver.Data.UpperDir}}",
                              name], sudo=True, check=False).stdout.strip().partition("\t")
    if not moments or not upper.startswith("/"):
        why = "its snapshots' times do not read" if not moments else \
            f"Docker's storage driver {driver or '?'} shows no layer of it the server can read"
        return f"cannot tell what changed in it since its last snapshot ({why})"
    since = max(moments)
    found = c.run(["find", upper, "-newerct", f"@{since - 1:.9f}", "!", "-type", "d", "-printf", CHANGED_FORMAT],
                  sudo=True, check=False)
    if found.exit_code != 0:
        return f"cannot tell what changed in it since its last snapshot (find failed: {found.stderr.strip()[-200:]})"
    changed = changed_since(found.stdout, since, mount_points(c, name))
    if changed:
        return f"files changed since the last snapshot ({', '.join(changed[:3])}{', …' if len(changed) > 3 else ''})"
    return ""


def confirm_rm(inventory, yes=False, force=False, container=None, **_) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError("ops.rm asks for confirmation: run it in a terminal, or pass --yes")
    what = container or "every managed container"
    answer = input(f"Remove {what} on the chosen hosts{' even with unsaved work' if force else ''}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise InputError("not confirmed; nothing was removed")


# --- restore ---

def restore_step(container: str, snapshot_tag: str | None) -> Step:
    def plan(c) -> Plan:
        f = c.facts()
        name = chosen(c, container)[0]
        snaps = snapshots_of(f, name)
        if not snaps:
            raise FleetError(f"no snapshot of {name} on {c.name}")
        tags = [f"{s['Repository']}:{s['Tag']}" for s in snaps]
        tag = snapshot_tag or tags[-1]
        if tag not in tags:
            raise FleetError(f"{tag} is not a snapshot of {name}; have {', '.join(tags)}")
        return Plan.change(Action(f"re-create {name} from {tag} with its volumes and ports",
                                  lambda c: recreate_from(c, name, tag)))
    return Step("ops.restore", plan)


# --- gpus ---

def users_of(host) -> dict[str, list[str]]:
    """{container: its people} (a container's `users`)."""
    return {name: list(spec.users) for name, spec in host.containers.items()}


def read_gpus(session, host, dry_run: bool, idle_flag_seconds: int) -> tuple[list[dict], str]:
    """(a row per GPU of the server, why there are none): one command on the server; the idle record is
    rewritten (not in a dry run) only when a GPU went idle or busy since the last look."""
    names = list(host.containers)
    result = session.run(gpu_view.gpus_script(names), sudo=True, check=False, kind="probe")
    try:
        sections = gpu_view.read_sections(result.stdout)
    except ProbeOutputError as e:
        raise FleetError(f"ops.gpus: {e}") from None
    if "now" not in sections:
        raise FleetError(f"ops.gpus: the server gave no answer ({result.stderr.strip()[-200:]})")
    rows, idle, why = gpu_view.gpu_rows(host.name, sections, names, users_of(host), idle_flag_seconds)
    current = parse_file(sections.get("idle", (1, "absent"))[1])
    if rows and not dry_run and idle != gpu_view.parse_idle(current.text):
        apply_file(session, FileChange(gpu_view.IDLE_RECORD, current,
                                       (jsonlib.dumps(idle, sort_keys=True) + "\n").encode(), backup=False))
    return rows, why


def gpus_step(idle_minutes: int) -> Step:
    def plan(c) -> Plan:
        rows, why = read_gpus(c.session, c.host, c.dry_run, idle_minutes * 60)
        c.report.data = rows
        flagged = sum(1 for row in rows if row["flags"])
        return Plan.ok(why or f"{len(rows)} GPU(s)" + (f", {flagged} flagged" if flagged else ""))
    return Step("ops.gpus", plan)


def gpus_table(reports) -> Table:
    table = Table(title="GPUs", title_justify="left")
    for column in gpu_view.COLUMNS:
        table.add_column(column)
    for report in reports:
        if report.failed and not report.data:
            table.add_row(Text(report.host), *[Text("-")] * (len(gpu_view.COLUMNS) - 2), Text(report.error))
        for row in report.data or []:
            *rest, flags = gpu_view.cells(row)
            table.add_row(*(Text(cell) for cell in rest), Text(flags, style="bold red" if flags else ""))
    return table


def print_gpus(reports) -> int | None:
    make_console().print(gpus_table(reports), soft_wrap=False)
    return None


def watch_gpus(inventory, hosts=(), watch=False, idle_minutes=60, interval=2.0, dry_run=False, **_) -> None:
    """`--watch`: the table redrawn live every `interval` seconds until Ctrl-C, one connection per server
    kept open and one command per server each time."""
    if not watch:
        return
    connector = Connector(inventory)
    log_dir = inventory.run.log_dir / datetime.now().strftime("%Y%m%d-%H%M%S-%f-gpus-watch")
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sessions = {name: open_session(connector, name, log_dir / f"{name}.log", None) for name in hosts}

    def look(name):
        try:
            sessions[name].open()
            rows, why = read_gpus(sessions[name], inventory.hosts[name], dry_run, int(idle_minutes) * 60)
            return HostReport(name, data=rows, error="" if rows else why)
        except FleetError as e:
            return HostReport(name, error=str(e))
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(len(hosts), inventory.run.parallel))) as pool, \
                Live(console=make_console(), auto_refresh=False) as live:
            while True:
                live.update(gpus_table(list(pool.map(look, hosts))), refresh=True)
                time.sleep(float(interval))
    except KeyboardInterrupt:
        pass
    finally:
        close_within([s.close for s in sessions.values()] + [connector.close], seconds=2)
    raise Exit(code=0)


# --- tasks ---

@task(help=HOST_TASK_HELP)
@fleet_task(default_hosts="all", after=print_ps)
def ps(c, dry_run=False, json=None):
    """List every managed container on the chosen hosts in one table."""
    c.run_steps([Step("ops.ps", plan_ps)])


@task(name="exec", help={"container": "container name", "command": "the command to run (a shell command line)",
                         "json": HOST_TASK_HELP["json"], "dry-run": HOST_TASK_HELP["dry-run"]})
@fleet_task()
def exec_(c, container, command, dry_run=False, json=None):
    """Run one command in a container on each chosen host and print its output."""
    chosen(c, container)

    def plan(c):
        return Plan.change(Action(f"run in {container}: {command}", lambda c: run_and_show(c, container, command)))
    c.run_steps([Step("ops.exec", plan)])


def run_and_show(c, container: str, command: str) -> str:
    result = c.run(in_container(container, ["sh", "-c", command]), sudo=True, check=False, kind="install")
    output = (result.stdout + result.stderr).rstrip()
    if result.exit_code:
        raise FleetError(f"exit {result.exit_code}: {output[-500:]}")
    return "output:\n" + output


@task(help={"host": "server name in the inventory", "container": "container name"})
def shell(c, host, container):
    """Open an interactive shell in a container through the jump chain (uses the generated ssh config)."""
    inventory = load_inventory()
    if container not in inventory.host(host).containers:
        raise InputError(f"{inventory.path}: no container {container!r} on host {host!r}")
    alias = inventory.container_alias(host, container)
    argv = ["ssh", "-F", str(inventory.local.ssh_config), alias]
    print(f"$ {shlex.join(argv)}", file=sys.stderr)
    os.execvp("ssh", argv)


def _lifecycle_task(verb: str, doc: str):
    @task(name=verb, help=CONTAINER_HELP)
    @fleet_task()
    def body(c, container=None, dry_run=False, json=None):
        c.run_steps([lifecycle_step(verb, container)])
    body.__doc__ = doc
    return body


start = _lifecycle_task("start", "Start managed containers (sshd comes up with them).")
stop = _lifecycle_task("stop", "Stop managed containers.")
restart = _lifecycle_task("restart", "Restart managed containers (sshd comes up with them).")


@task(name="snapshot", help={**CONTAINER_HELP, "no-pause": "do not pause the container while committing"})
@fleet_task()
def snapshot_(c, container=None, no_pause=False, dry_run=False, json=None):
    """docker commit a container to NAME-snapshot:TIMESTAMP, keeping the last keep_snapshots."""
    c.run_steps([snapshot_step(container, pause=not no_pause)])


@task(help={**CONTAINER_HELP, "force": "remove even with unsaved changes or GPU processes",
            "yes": "do not ask for confirmation"})
@fleet_task(before=confirm_rm)
def rm(c, container=None, force=False, yes=False, dry_run=False, json=None):
    """Remove a container; refuses when it has unsaved changes or GPU processes (volumes always kept)."""
    c.run_steps([rm_step(container, force)])


@task(help={**HOST_TASK_HELP, "container": "container name", "snapshot": "image tag (default: the latest snapshot)"})
@fleet_task()
def restore(c, container, snapshot=None, dry_run=False, json=None):
    """Re-create a container from one of its snapshots, with its volumes and ports."""
    c.run_steps([restore_step(container, snapshot)])


@task(help={**HOST_TASK_HELP, "watch": "redraw the table live until Ctrl-C",
            "idle-minutes": "flag a GPU a container holds that has been idle this long (default 60)",
            "interval": "seconds between redraws with --watch (default 2)"})
@fleet_task(default_hosts="all", before=watch_gpus, after=print_gpus)
def gpus(c, watch=False, idle_minutes=60, interval=2.0, dry_run=False, json=None):
    """Every GPU of every server: use, the container holding it and its users, processes, idle time, flags."""
    c.run_steps([gpus_step(int(idle_minutes))])


ns = Collection("ops", ps, exec_, shell, start, stop, restart, snapshot_, rm, restore, gpus)
