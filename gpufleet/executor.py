"""Running a task on many hosts at once, then one recap.

Fabric runs `-H a,b` hosts one after another.  This executor (named in
`fabric.yaml` as `tasks.executor_class`) resolves `-H` names through the
inventory, opens each jump host once, runs every host in its own thread up to
`[run] parallel`, finishes every host, prints one recap and exits 0 (all
succeeded), 1 (a host failed) or 2 (bad input, nothing touched).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

from fabric.executor import Executor
from invoke import Context
from invoke.exceptions import Exit

from gpufleet import inventory as inv
from gpufleet.fleet import load_inventory
from gpufleet.connect import Connector
from gpufleet.errors import ConnectError, FleetError, InputError
from gpufleet.output import Display, plain_progress_every
from gpufleet.paths import probe_request
from gpufleet.plan import FAILED, HostContext, HostReport, StepResult
from gpufleet.remote import LocalSession, Session, SshSession

STATE_DIR = Path(".gpufleet")
FAILED_HOSTS_FILE = STATE_DIR / "failed-hosts"


def close_within(closers, seconds: float) -> None:
    """Call the closers in parallel, waiting `seconds` at most; a closer that fails is ignored
    (a connection through a jump host that is already gone cannot say goodbye)."""
    def quietly(close):
        try:
            close()
        except Exception:
            pass
    threads = [threading.Thread(target=quietly, args=(close,), daemon=True) for close in closers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


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
            gone = [n for n in expanded if n not in inventory.hosts]
            if gone:
                raise InputError(f"{FAILED_HOSTS_FILE}: host {gone[0]!r} failed in the last run but is not in "
                                 f"{inventory.path} any more; name the hosts with -H instead")
        else:
            inventory.host(name)
            expanded = [name]
        out += [n for n in expanded if n not in out]
    return out


def check_json_path(path: str) -> None:
    """Refuse a `--json PATH` that cannot be written, before any host is contacted (nothing is created)."""
    target = Path(path)
    parent = target.parent
    reason = ("is a folder" if target.is_dir()
              else f"its folder {parent} does not exist" if not parent.exists()
              else f"{parent} is not a folder" if not parent.is_dir()
              else f"its folder {parent} is not writable" if not os.access(parent, os.W_OK | os.X_OK)
              else "is not writable" if target.exists() and not os.access(target, os.W_OK)
              else "")
    if reason:
        raise InputError(f"--json {path}: {reason}")


def open_session(connector: Connector, name: str, log_path: Path, sudo_password: str | None) -> Session:
    """A local session for a host with `address = "local"`, else one SSH connection through its jump chain."""
    host = connector.inventory.hosts[name]
    if host.is_local:
        return LocalSession(name, log_path, sudo_password, user=host.user)
    return SshSession(name, connector.connection(name), log_path, sudo_password)


class FleetExecutor(Executor):
    """Invoke/Fabric executor that runs host tasks in parallel with a recap."""

    def execute(self, *tasks):
        # from here on Ctrl-C raises KeyboardInterrupt, so that a run can close its
        # connections and print what finished (see gpufleet.cli.exit_on_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return self._execute(*tasks)
        except InputError as e:
            raise Exit(f"error: {e}", code=2) from None
        except FleetError as e:
            raise Exit(f"error: {e}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted (Ctrl-C) before any host was contacted", code=130) from None

    def _execute(self, *tasks):
        results = {}
        for call in self.normalize(tasks):
            self.config.load_collection(self.collection.configuration(call.called_as))
            self.config.load_shell_env()  # FABRIC_SUDO_PASSWORD and the like, as Invoke's own executor does
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
        if call.kwargs.get("json"):
            check_json_path(call.kwargs["json"])
        plain_every = plain_progress_every()
        if call.task.body.fleet_before:
            call.task.body.fleet_before(inventory, hosts=names, **call.kwargs)
        dry_run = bool(call.kwargs.get("dry_run"))
        sudo_password = self.config.get("sudo", {}).get("password")
        connector = Connector(inventory, sudo_password=sudo_password)
        run_dir = inventory.run.log_dir / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(inventory.run.log_dir, 0o700)  # logs hold command output: the owner's alone
        display = Display(names, title=f"{call.called_as}{' (dry run: nothing is changed)' if dry_run else ''}",
                          show_diffs=dry_run, plain_every=plain_every)
        reports: dict[str, HostReport] = {}  # filled by the hosts' threads as they finish
        contexts: dict[str, HostContext] = {}
        sessions: list[Session] = []
        started = time.monotonic()
        slots = threading.Semaphore(max(1, inventory.run.parallel))

        def one_host(name: str) -> None:
            with slots:
                host_started = time.monotonic()
                session = open_session(connector, name, run_dir / f"{name}.log", sudo_password)
                session.secrets += inventory.hosts[name].secrets  # e.g. in `docker inspect` output
                session.timeouts = inventory.hosts[name].timeouts
                sessions.append(session)
                ctx = HostContext(inventory.hosts[name], inventory, session, dry_run=dry_run,
                                  known_hosts=connector.known_hosts, on_event=display.event)
                ctx.probe_request = probe_request
                contexts[name] = ctx
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
                    ctx.report.seconds = time.monotonic() - host_started
                    session.close()
                reports[name] = ctx.report
                display.event(name, "done", ctx.report)

        interrupted = False
        with display:
            try:
                for name, message in self.open_jump_hosts(connector, names, run_dir).items():
                    reports[name] = HostReport(name, [StepResult("connect", FAILED, message)], error=message,
                                               failed_step="connect")
                # daemon threads: a host stuck in a read must not keep fab alive after Ctrl-C
                workers = [threading.Thread(target=one_host, args=(n,), name=f"host-{n}", daemon=True)
                           for n in names if n not in reports]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    while worker.is_alive():
                        worker.join(0.2)
            except KeyboardInterrupt:
                interrupted = True
                display.closed = True
                # what each host had finished at the moment of Ctrl-C; closing the connections
                # makes the steps in flight fail, which is not what the user asked to see
                final = dict(reports)
                for name, ctx in list(contexts.items()):
                    if name not in final:
                        step = ctx.current_step or "connect"
                        final[name] = HostReport(name, list(ctx.report.steps), time.monotonic() - started,
                                                 error="interrupted (Ctrl-C)", failed_step=step)
                # remote shells get SIGHUP, local ones SIGTERM (their traps remove temp files);
                # hosts first, then the jump hosts their connections go through
                close_within([s.abort for s in list(sessions)], seconds=2)
                close_within([connector.close], seconds=1)
        if not interrupted:
            connector.close()
            final = reports
        for name in names:
            if name not in final:  # never started: waiting for a free slot at Ctrl-C
                final[name] = HostReport(name, error="interrupted (Ctrl-C) before it started",
                                         failed_step="not started")
        ordered = [final[n] for n in names]
        after = call.task.body.fleet_after
        exit_code = after(ordered) if after and not interrupted else None
        display.recap(ordered, time.monotonic() - started, run_dir)
        self.save_outcome(ordered, call.kwargs.get("json"), dry_run, interrupted)
        if interrupted:
            raise Exit("interrupted (Ctrl-C): connections closed; the recap above shows what finished", code=130)
        if exit_code is None:
            exit_code = 1 if any(r.failed for r in ordered) else 0
        if exit_code:
            raise Exit(code=exit_code)
        return ordered

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
