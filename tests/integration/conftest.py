"""The Docker lab for integration tests: one session lab, always torn down.

Every test under tests/integration is marked `lab` and skipped, with the reason,
when no Docker engine answers. The session lab uses its own prefix and subnet,
so it can run beside the demo lab (`fab lab.up`).
"""
from __future__ import annotations

import atexit
import os
import signal
from pathlib import Path

import pytest

from lab.topology import Lab

# GPUFLEET_TEST_LAB="prefix subnet" lets two checkouts run their suites on one engine at once
TEST_PREFIX, TEST_SUBNET = os.environ.get("GPUFLEET_TEST_LAB", "gpufleet-test 10.77.20.0/24").split()
HERE = Path(__file__).resolve().parent

_engine: tuple[object, str] | None = None


def docker_engine():
    """(client, "") when a Docker engine answers, else (None, why not)."""
    global _engine
    if _engine is None:
        try:
            import docker
            client = docker.from_env(timeout=300)
            client.ping()
            _engine = (client, "")
        except Exception as e:  # no SDK, no socket, no permission: all mean "no lab here"
            _engine = (None, f"no Docker engine answers ({type(e).__name__}: {e}); "
                             f"run scripts/ensure-docker.sh (or `make test`) to get one")
    return _engine


def pytest_collection_modifyitems(config, items):
    ours = [item for item in items if HERE in Path(item.path).resolve().parents]
    if not ours:
        return
    client, why = docker_engine()
    for item in ours:
        item.add_marker(pytest.mark.lab)
        if client is None:
            item.add_marker(pytest.mark.skip(reason=why))


class _Teardown:
    """Runs `lab.down()` once, whichever of finalizer, atexit or SIGTERM comes first."""

    def __init__(self, lab: Lab):
        self.lab, self.done = lab, False

    def __call__(self):
        if not self.done:
            self.done = True
            self.lab.down()


def _raise_interrupt_on_sigterm():
    # A CI timeout sends SIGTERM; as KeyboardInterrupt it lets pytest run the finalizers.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, interrupt)


def start_lab(directory: Path, prefix: str, subnet: str, hosts: int, request) -> Lab:
    """A fresh lab (leftovers of an interrupted run are removed first), torn down at the end."""
    client, why = docker_engine()
    if client is None:
        pytest.skip(why)
    lab = Lab(directory, prefix=prefix, subnet=subnet, client=client)
    teardown = _Teardown(lab)
    request.addfinalizer(teardown)
    atexit.register(teardown)
    _raise_interrupt_on_sigterm()
    lab.down()
    lab.up(hosts=hosts)
    return lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory, request) -> Lab:
    """The session's lab: bastion, aptproxy, mirror, pkgmirror, gpu1 (Debian 12, systemd), gpu2 (Debian 12,
    no systemd), gpu3 (Debian 13, systemd: the package mirror's tests; the session bootstraps gpu1 and gpu2)."""
    return start_lab(tmp_path_factory.mktemp("lab"), TEST_PREFIX, TEST_SUBNET, 3, request)


@pytest.fixture(scope="session")
def lab_inventory(lab) -> Path:
    """The session lab's generated hosts.toml."""
    return lab.inventory_path


@pytest.fixture
def make_lab(request):
    """Start another lab for one test (its own prefix and subnet); torn down after it."""
    def make(directory: Path, prefix: str, subnet: str, hosts: int = 1) -> Lab:
        return start_lab(directory, prefix, subnet, hosts, request)
    return make


@pytest.fixture
def docker_client():
    client, why = docker_engine()
    if client is None:
        pytest.skip(why)
    return client


@pytest.fixture
def fresh_servers(lab) -> list[str]:
    """Every lab server replaced by a fresh bare one (same address and host key) before the test."""
    lab.recreate_servers()
    return lab.server_names


REPO = HERE.parent.parent
LOCAL_TASKS = ("gen-ssh-config", "show-host", "ops.shell", "doctor-local", "lab.up", "lab.down", "lab.status")


class Fab:
    """Runs the real `fab` CLI against an inventory, from a scratch directory."""

    def __init__(self, inventory: Path, cwd: Path):
        self.inventory, self.cwd = inventory, cwd

    def __call__(self, *args, inventory: Path | None = None, timeout: int = 900):
        import json
        import os
        import subprocess
        import sys
        out = self.cwd / "recap.json"
        out.unlink(missing_ok=True)
        env = dict(os.environ, FABRIC_INVENTORY=str(inventory or self.inventory), PYTHONPATH=str(REPO))
        task = args[2] if args[:1] == ("-H",) else args[0]
        extra = [] if task in LOCAL_TASKS else ["--json", str(out)]
        result = subprocess.run([sys.executable, "-m", "fabric", "-r", str(REPO), *args, *extra],
                                cwd=self.cwd, env=env, capture_output=True, text=True, timeout=timeout)
        result.recap = json.loads(out.read_text()) if out.exists() else None
        result.hosts = {h["host"]: h for h in result.recap["hosts"]} if result.recap else {}
        return result


@pytest.fixture(scope="session")
def fab(lab_inventory, tmp_path_factory) -> Fab:
    return Fab(lab_inventory, tmp_path_factory.mktemp("fab"))


@pytest.fixture(scope="session")
def bootstrapped(lab, fab):
    """Fresh bare servers, then one `bootstrap` of gpu1 and gpu2: the converged lab later tests start from.
    Its `dry_run` is the dry run of that bootstrap on the same fresh servers, just before it."""
    lab.recreate_servers()
    dry_run = fab("-H", "gpu1,gpu2", "bootstrap", "--dry-run")
    result = fab("-H", "gpu1,gpu2", "bootstrap")
    result.dry_run = dry_run
    return result
