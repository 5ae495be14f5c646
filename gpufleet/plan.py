"""Plan, then apply: steps, their results, and the per-host context tasks receive.

A step's `plan(ctx)` reads facts and returns a Plan: skipped (with why), ok (with
why nothing is needed), or a list of Actions.  The same code runs in a dry run;
it simply stops before `Action.apply`.  "Changed" is therefore derived: a step is
changed exactly when its plan had actions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from gpufleet import facts as facts_mod
from gpufleet import progress
from gpufleet.errors import CommandFailed, FleetError
from gpufleet.inventory import Host, Inventory
from gpufleet.remote import Session, mask

OK, CHANGED, FAILED, SKIPPED = "ok", "changed", "failed", "skipped"


@dataclass
class Action:
    """One change a step will make; `apply` does it, `diff` shows it in a dry run."""
    summary: str
    # returns None, or a note for the report (e.g. a public key to hand to the user)
    apply: Callable[["HostContext"], str | None]
    diff: str = ""
    warning: str = ""
    # what the action did to the facts, when that is all it did and exactly known (a file written):
    # the facts are updated in place instead of probed again
    known_result: Callable[["facts_mod.HostFacts"], None] | None = None


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    reason: str = ""
    skip: str = ""

    @classmethod
    def ok(cls, reason: str) -> "Plan":
        return cls(reason=reason)

    @classmethod
    def skipped(cls, reason: str) -> "Plan":
        return cls(skip=reason)

    @classmethod
    def change(cls, *actions: Action) -> "Plan":
        return cls(actions=[a for a in actions if a is not None])


@dataclass
class Step:
    """A named unit of work; `plan` must not change the host."""
    name: str
    plan: Callable[["HostContext"], Plan]


@dataclass
class StepResult:
    step: str
    status: str
    message: str
    diff: str = ""
    warning: str = ""
    seconds: float = 0.0


@dataclass
class HostReport:
    host: str
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    failed_step: str = ""
    commands: int = 0
    connections: int = 0
    data: list = field(default_factory=list)  # rows for tasks that report a table (ps, doctor)

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    def as_dict(self) -> dict:
        return {
            "host": self.host, "ok": self.count(OK), "changed": self.count(CHANGED),
            "failed": self.count(FAILED), "skipped": self.count(SKIPPED),
            "seconds": round(self.seconds, 2), "error": self.error, "failed_step": self.failed_step,
            "ssh_connections": self.connections, "remote_commands": self.commands,
            "steps": [{"step": s.step, "status": s.status, "message": s.message,
                       **({"diff": s.diff} if s.diff else {}), **({"warning": s.warning} if s.warning else {})}
                      for s in self.steps],
            **({"data": self.data} if self.data else {}),  # a table's rows (ops.ps, doctor, ops.gpus)
        }


class HostContext:
    """What a host task receives as `c`: the host, its session, facts and report."""

    def __init__(self, host: Host, inventory: Inventory, session: Session, *, dry_run: bool = False,
                 known_hosts=None, on_event: Callable[[str, str, object], None] | None = None):
        self.host = host
        self.inventory = inventory
        self.session = session
        self.dry_run = dry_run
        self.known_hosts = known_hosts
        self.report = HostReport(host.name)
        self._facts: facts_mod.HostFacts | None = None
        self._on_event = on_event or (lambda *a: None)
        self.probe_request: Callable[["HostContext"], facts_mod.ProbeRequest] | None = None
        self.current_step = ""
        self._finishers: list[Callable[["HostContext"], None]] = []
        self.run_state: dict = {}  # what a stage keeps for the rest of this host's run
        # the containers an earlier step's plan runs, re-creates or starts: a dry run cannot read them as
        # they will be, so the steps after say what they will do in them
        self.containers_to_come: set[str] = set()

    @property
    def name(self) -> str:
        return self.host.name

    def run(self, command, **kwargs):
        """Run a command on the host; what its output says it is doing goes to the display as
        `progress` events (apt's package, docker pull's layers, the data-root copy's size)."""
        if "on_output" in kwargs:
            return self.session.run(command, **kwargs)
        watcher = progress.OutputWatcher(
            lambda text: self._on_event(self.name, "progress", mask(text, self.session.secrets)))
        try:
            return self.session.run(command, on_output=watcher, **kwargs)
        finally:
            watcher.close()

    def facts(self) -> facts_mod.HostFacts:
        """The host's facts, probed once and again only after a change."""
        if self._facts is None:
            request = self.probe_request(self) if self.probe_request else facts_mod.ProbeRequest()
            self._facts = facts_mod.gather(self.session, request)
        return self._facts

    def invalidate(self) -> None:
        self._facts = None

    def running_containers(self):
        """(name, ContainerFacts) of each of the host's containers; one that is not running fails the
        step.  A dry run leaves out the containers an earlier step runs, re-creates or starts: what is in
        them is known only once they run (see `once_running`)."""
        for name in self.host.containers:
            if self.dry_run and name in self.containers_to_come:
                continue
            inside = self.facts().inside.get(name)
            if inside is None:
                raise FleetError(f"container {name} is not running (docker logs {name} says why)")
            yield name, inside

    def once_running(self, what: Callable[[str], str]) -> list[Action]:
        """In a dry run, one action for each container an earlier step runs, re-creates or starts, saying
        `what(name)` the step will do in it once it runs; none in a real run (the container is running by
        then, and the step reads it)."""
        if not self.dry_run:
            return []
        return [Action(f"{what(name)} in {name} once it runs", lambda c: None)
                for name in self.host.containers if name in self.containers_to_come]

    def on_finish(self, callback: Callable[["HostContext"], None]) -> None:
        """Call `callback(ctx)` once after this host's last step (also after a failed one)."""
        self._finishers.append(callback)

    def run_steps(self, steps: list[Step]) -> HostReport:
        """Run steps in order; the first failure stops this host (others go on)."""
        try:
            for step in steps:
                if not self._run_step(step):
                    break
        finally:
            finishers, self._finishers = self._finishers, []
            for finish in finishers:
                try:
                    finish(self)
                except FleetError as e:  # bookkeeping after the work: a warning, not a failed host
                    if self.report.steps:
                        last = self.report.steps[-1]
                        last.warning = "; ".join(w for w in (last.warning, f"afterwards: {e}") if w)
        return self.report

    def _run_step(self, step: Step) -> bool:
        self._on_event(self.name, "step", step.name)
        self.current_step = step.name
        started = time.monotonic()
        try:
            plan = step.plan(self)
            if plan.skip:
                result = StepResult(step.name, SKIPPED, plan.skip)
            elif not plan.actions:
                result = StepResult(step.name, OK, plan.reason)
            else:
                warnings = "; ".join(a.warning for a in plan.actions if a.warning)
                diff = "".join(a.diff if a.diff.endswith("\n") or not a.diff else a.diff + "\n" for a in plan.actions)
                summary = "; ".join(a.summary for a in plan.actions)
                if not self.dry_run:
                    for action in plan.actions:
                        self._on_event(self.name, "action", action.summary)
                        note = action.apply(self)
                        if action.known_result and self._facts is not None:
                            action.known_result(self._facts)
                        else:
                            self.invalidate()
                        if isinstance(note, str) and note:
                            summary += f"; {note}"
                result = StepResult(step.name, CHANGED, ("would " if self.dry_run else "") + summary, diff, warnings)
        except FleetError as e:
            message = str(e)
            if isinstance(e, CommandFailed) and not message.startswith(self.name):
                message = f"{message}"
            result = StepResult(step.name, FAILED, message)
        except Exception as e:  # a bug or an unexpected remote state: still finish the other hosts
            result = StepResult(step.name, FAILED, f"unexpected error: {type(e).__name__}: {e}")
        result.seconds = time.monotonic() - started
        self.report.steps.append(result)
        self._on_event(self.name, "result", result)
        if result.status == FAILED:
            self.report.error = result.message
            self.report.failed_step = step.name
            return False
        return True
