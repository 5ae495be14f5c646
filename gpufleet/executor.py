"""Running a task on many hosts at once, then one recap.

Fabric runs `-H a,b` hosts one after another.  This executor (named in
`fabric.yaml` as `tasks.executor_class`) resolves `-H` names through the
inventory, opens each jump host once, runs every host in its own thread up to
`[run] parallel`, finishes every host, prints one recap and exits 0 (all
succeeded), 1 (a host failed) or 2 (bad input, nothing touched).
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path

from fabric.executor import Executor
from invoke import Context
from invoke.exceptions import Exit

from gpufleet import inventory as inv
from gpufleet.fleet import load_inventory
from gpufleet.connect import Connector
from gpufleet.errors import ConnectError, FleetError, InputError
from gpufleet.output import Display
from gpufleet.paths import probe_request
from gpufleet.plan import FAILED, HostContext, HostReport, StepResult
from gpufleet.remote import LocalSession, Session, SshSession

STATE_DIR = Path(".gpufleet")
FAILED_HOSTS_FILE = STATE_DIR / "failed-hosts"


def resolve_hosts(inventory: inv.Inventory, names: list[str]) -> list[str]:
    """`-H` names → inventory names; `all` and `@failed` (the last run's failed hosts) expand."""
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name == "all":
            expanded = list(inventory.hosts)
        elif name == "@failed":
            if not FAILED_HOSTS_FILE.exists():
                raise InputError(f"{FAILED_HOSTS_FILE}: no failed hosts recorded by a previous run")
            expanded = FAILED_HOSTS_FILE.read_text().split()
        else:
            inventory.host(name)
            expanded = [name]
        out += [n for n in expanded if n not in out]
    return out


def open_session(connector: Connector, name: str, log_path: Path, sudo_password: str | None) -> Session:
    """A local session for a host with `address = "local"`, else one SSH connection through its jump chain."""
    host = connector.inventory.hosts[name]
    if host.is_local:
        return LocalSession(name, log_path, sudo_password, user=host.user)
    return SshSession(name, connector.connection(name), log_path, sudo_password)


class FleetExecutor(Executor):
    """Invoke/Fabric executor that runs host tasks in parallel with a recap."""

    def execute(self, *tasks):
        try:
            return self._execute(*tasks)
        except InputError as e:
            raise Exit(f"error: {e}", code=2) from None
        except FleetError as e:
            raise Exit(f"error: {e}", code=1) from None

    def _execute(self, *tasks):
        results = {}
        for call in self.normalize(tasks):
            self.config.load_collection(self.collection.configuration(call.called_as))
            body = call.task.body
            if getattr(body, "fleet", False):
                results[call.task] = self.run_on_hosts(call)
            else:
                results[call.task] = call.task(Context(config=self.config), *call.args, **call.kwargs)
        return results

    def host_names(self, call, inventory) -> list[str]:
        given = self.core[0].args.hosts.value if self.core else None
        if given:
            return resolve_hosts(inventory, given.split(","))
        default = call.task.body.fleet_default_hosts
        if default == "all":
            return list(inventory.hosts)
        raise InputError(f"`{call.called_as}` needs hosts: fab -H gpu1,gpu2 {call.called_as} (or -H all)")

    def run_on_hosts(self, call) -> list[HostReport]:
        inventory = load_inventory()
        names = self.host_names(call, inventory)
        if call.task.body.fleet_before:
            call.task.body.fleet_before(inventory, **call.kwargs)
        dry_run = bool(call.kwargs.get("dry_run"))
        sudo_password = self.config.get("sudo", {}).get("password")
        connector = Connector(inventory, sudo_password=sudo_password)
        run_dir = inventory.run.log_dir / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir.mkdir(parents=True, exist_ok=True)
        display = Display(names, title=f"{call.called_as}{' (dry run: nothing is changed)' if dry_run else ''}",
                          show_diffs=dry_run)
        reports: dict[str, HostReport] = {}
        started = time.monotonic()

        unreachable = self.open_jump_hosts(connector, names, run_dir)
        for name, message in unreachable.items():
            reports[name] = HostReport(name, [StepResult("connect", FAILED, message)], error=message, failed_step="connect")

        sessions: list[Session] = []

        def one_host(name: str) -> HostReport:
            session = open_session(connector, name, run_dir / f"{name}.log", sudo_password)
            sessions.append(session)
            ctx = HostContext(inventory.hosts[name], inventory, session, dry_run=dry_run,
                              known_hosts=connector.known_hosts, on_event=display.event)
            ctx.probe_request = probe_request
            try:
                session.open()
                call.task.body(ctx, *call.args, **call.kwargs)
            except FleetError as e:
                if not ctx.report.error:
                    ctx.report.steps.append(StepResult("connect", FAILED, str(e)))
                    ctx.report.error, ctx.report.failed_step = str(e), "connect"
            except Exception as e:  # never let one host's bug stop the others
                ctx.report.error = f"unexpected error: {type(e).__name__}: {e}"
                ctx.report.failed_step = ctx.report.failed_step or "task"
            finally:
                ctx.report.commands, ctx.report.connections = session.commands, session.connections
                session.close()
            display.event(name, "done", ctx.report)
            return ctx.report

        todo = [n for n in names if n not in reports]
        pool = ThreadPoolExecutor(max_workers=max(1, min(inventory.run.parallel, len(todo) or 1)))
        interrupted = False
        with display:
            futures = {pool.submit(self._timed, one_host, n): n for n in todo}
            try:
                pending = set(futures)
                while pending:
                    _, pending = wait(pending, timeout=0.2)
            except KeyboardInterrupt:
                interrupted = True
                for f in futures:
                    f.cancel()
                for session in sessions:  # remote shells get SIGHUP, local ones SIGTERM: traps remove temp files
                    session.abort()
                connector.close()
            for future, name in futures.items():
                if future.done() and not future.cancelled() and future.exception() is None:
                    reports[name] = future.result()
                else:
                    reason = "interrupted (Ctrl-C)" if interrupted else f"{future.exception()}"
                    reports[name] = reports.get(name) or HostReport(name, error=reason, failed_step="interrupted")
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        connector.close()
        ordered = [reports[n] for n in names]
        after = call.task.body.fleet_after
        exit_code = after(ordered) if after else None
        display.recap(ordered, time.monotonic() - started, run_dir)
        self.save_outcome(ordered, call.kwargs.get("json"), dry_run, interrupted)
        if interrupted:
            raise Exit("interrupted: connections closed; the recap above shows what was done", code=130)
        if exit_code is None:
            exit_code = 1 if any(r.failed for r in ordered) else 0
        if exit_code:
            raise Exit(code=exit_code)
        return ordered

    @staticmethod
    def _timed(fn, name):
        started = time.monotonic()
        report = fn(name)
        report.seconds = time.monotonic() - started
        return report

    @staticmethod
    def open_jump_hosts(connector: Connector, names: list[str], run_dir: Path) -> dict[str, str]:
        """Open each jump host once; every host behind a dead one fails with one message."""
        dead: dict[str, str] = {}
        for jump in connector.jumps_in_use(names):
            try:
                session = SshSession(jump, connector.jump_connection(jump), run_dir / f"{jump}.jump.log")
                session.open()
            except ConnectError as e:
                dead[jump] = f"jump host {e}"
        unreachable = {}
        for name in names:
            for hop in connector.inventory.jump_chain(name):
                if hop.name in dead:
                    unreachable[name] = dead[hop.name]
                    break
        return unreachable

    @staticmethod
    def save_outcome(reports: list[HostReport], json_path, dry_run: bool, interrupted: bool) -> None:
        STATE_DIR.mkdir(exist_ok=True)
        failed = [r.host for r in reports if r.failed]
        if failed:
            FAILED_HOSTS_FILE.write_text("\n".join(failed) + "\n")
        elif FAILED_HOSTS_FILE.exists() and not dry_run:
            FAILED_HOSTS_FILE.unlink()
        if json_path:
            doc = {"dry_run": dry_run, "interrupted": interrupted,
                   "failed_hosts": failed, "hosts": [r.as_dict() for r in reports]}
            Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
