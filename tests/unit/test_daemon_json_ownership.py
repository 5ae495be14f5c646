"""docker.configure plans from facts (no host): keys the tool set and the inventory dropped are removed,
foreign keys stay, a dropped data-root is a data-root change like any other, the record is kept."""
import base64
import json

import pytest

from gpufleet import daemon_json, facts, inventory, pending
from gpufleet.errors import FleetError, InputError
from gpufleet.paths import DAEMON_JSON, DAEMON_JSON_KEYS, probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import LocalSession
from tasks import docker

MIRROR = "http://10.9.0.3:5000"
INVENTORY = """
[local]
known_hosts = "/nonexistent/known_hosts"
[hosts.gpu1]
address = "10.0.0.1"
"""
WITH_KEYS = INVENTORY + f"""registry_mirrors = ["{MIRROR}"]
data_root = "/data/docker"
[hosts.gpu1.daemon_json]
max-concurrent-downloads = 5
"""
INFO = {"ServerVersion": "20.10.24", "DockerRootDir": "/data/docker", "Images": 0, "Containers": 0,
        "ContainersRunning": 0, "Runtimes": {"runc": {}}, "RegistryConfig": {"Mirrors": [MIRROR + "/"]}}


section = facts.frame


def readfile(content):
    return "absent" if content is None else "644 root root\n" + base64.b64encode(content.encode()).decode()


def context(inv_text, daemon=None, record=None, info=INFO, restart_pending=None):
    """A dry-run context whose facts are a probe output with these files (None: absent)."""
    inv = inventory.loads(inv_text)
    ctx = HostContext(inv.host("gpu1"), inv, LocalSession(), dry_run=True)
    request = probe_request(ctx)
    files = {DAEMON_JSON: daemon, DAEMON_JSON_KEYS: record, pending.DOCKER_RESTART: restart_pending}
    text = (section("os_release", 'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n')
            + section("packages", "docker.io\tii \t20.10.24+dfsg1-1+b3\n")
            + section("docker_info", json.dumps(info))
            + "".join(section(f"file:{i}", readfile(files.get(path))) for i, path in enumerate(request.files)))
    ctx._facts = facts.parse_probe(text, request)
    return ctx


def record(*paths):
    return daemon_json.render_owned(paths)


CONVERGED = json.dumps({"log-level": "warn", "data-root": "/data/docker", "registry-mirrors": [MIRROR],
                        "max-concurrent-downloads": 5})
OURS = record(("data-root",), ("max-concurrent-downloads",), ("registry-mirrors",))


def test_converged_host_with_its_record_is_ok():
    plan = docker.plan_configure(context(WITH_KEYS, CONVERGED, OURS))
    assert not plan.actions and plan.reason.startswith(f"{DAEMON_JSON} already has these keys")


def test_keys_dropped_from_the_inventory_are_removed_and_foreign_keys_kept():
    inv = WITH_KEYS.replace(f'registry_mirrors = ["{MIRROR}"]\n', "").replace(
        "[hosts.gpu1.daemon_json]\nmax-concurrent-downloads = 5\n", "")
    plan = docker.plan_configure(context(inv, CONVERGED, OURS))
    update, keep_record = plan.actions
    assert update.summary == (f"update {DAEMON_JSON} (remove registry-mirrors, max-concurrent-downloads) "
                              "and restart Docker")
    assert update.diff == f'- registry-mirrors: ["{MIRROR}"]\n- max-concurrent-downloads: 5\n'
    assert keep_record.summary == f"record the daemon.json keys gpufleet sets (data-root) in {DAEMON_JSON_KEYS}"
    assert '-    ["registry-mirrors"]' in keep_record.diff
    again = context(inv, json.dumps({"log-level": "warn", "data-root": "/data/docker"}), record(("data-root",)))
    assert not docker.plan_configure(again).actions


def test_everything_dropped_leaves_only_the_foreign_keys():
    plan = docker.plan_configure(context(INVENTORY, CONVERGED, OURS, dict(INFO, DockerRootDir="/var/lib/docker")))
    assert "remove data-root, registry-mirrors, max-concurrent-downloads" in plan.actions[0].summary
    assert plan.actions[1].summary == f"record the daemon.json keys gpufleet sets (none) in {DAEMON_JSON_KEYS}"


def test_without_a_record_no_key_is_removed_and_the_record_is_started():
    # keys set before the tool kept its record (or by hand) are foreign: never removed on a guess
    plan = docker.plan_configure(context(INVENTORY + 'data_root = "/data/docker"\n', CONVERGED, None))
    (start_record,) = plan.actions
    assert start_record.summary == f"record the daemon.json keys gpufleet sets (data-root) in {DAEMON_JSON_KEYS}"
    assert not docker.plan_configure(context(INVENTORY, CONVERGED, None)).actions


def test_a_key_we_own_edited_by_hand_is_set_back():
    edited = json.dumps({**json.loads(CONVERGED), "registry-mirrors": ["https://by.hand.example"]})
    plan = docker.plan_configure(context(WITH_KEYS, edited, OURS))
    (update,) = plan.actions
    assert update.diff == f'~ registry-mirrors: ["https://by.hand.example"] -> ["{MIRROR}"]\n'


def test_a_dropped_data_root_is_a_data_root_change_refused_when_it_hides_images():
    inv = WITH_KEYS.replace('data_root = "/data/docker"\n', "")
    busy = dict(INFO, Images=3, Containers=1)
    with pytest.raises(FleetError, match=r"data-root change /data/docker -> /var/lib/docker would hide 3 image\(s\) "
                                         r"and 1 container\(s\); set allow_data_root_migration = true"):
        docker.plan_configure(context(inv, CONVERGED, OURS, busy))
    allowed = inv.replace("[hosts.gpu1.daemon_json]", "allow_data_root_migration = true\n[hosts.gpu1.daemon_json]")
    move, keep_record = docker.plan_configure(context(allowed, CONVERGED, OURS, busy)).actions
    assert move.summary.startswith("move Docker's data from /data/docker to /var/lib/docker")
    assert '- data-root: "/data/docker"' in move.diff
    assert "(max-concurrent-downloads, registry-mirrors)" in keep_record.summary
    empty = docker.plan_configure(context(inv, CONVERGED, OURS))  # nothing to hide: a plain update
    assert empty.actions[0].summary == f"update {DAEMON_JSON} (remove data-root) and restart Docker"


def test_a_record_that_is_not_ours_fails_the_host_and_touches_nothing():
    with pytest.raises(InputError, match=rf"^{DAEMON_JSON_KEYS}: not a record gpufleet wrote"):
        docker.plan_configure(context(WITH_KEYS, CONVERGED, '{"owned": []}'))


def test_the_nvidia_runtime_goes_with_the_toolkit_and_another_runtime_stays():
    runtimes = {"nvidia": {"path": "nvidia-container-runtime", "args": []}, "runsc": {"path": "/usr/bin/runsc"}}
    current = json.dumps({"data-root": "/data/docker", "runtimes": runtimes})
    inv = INVENTORY + 'data_root = "/data/docker"\n'
    # no nvidia-container-toolkit in the packages: the runtime is no longer wanted
    ours = record(("data-root",), ("runtimes", "nvidia"))
    update, keep_record = docker.plan_configure(context(inv, current, ours)).actions
    assert update.summary == f"update {DAEMON_JSON} (remove runtimes.nvidia) and restart Docker"
    assert update.diff == '- runtimes.nvidia: {"args": [], "path": "nvidia-container-runtime"}\n'  # runsc: no line
    assert keep_record.summary.endswith(f"(data-root) in {DAEMON_JSON_KEYS}")


# a daemon.json as wanted is not yet applied while a cut run's restart is pending, or while the
# running daemon (its `docker info`) lacks what the file asks for
NOT_APPLIED = [
    ("pending record", "daemon.json was written\n", INFO, "an earlier run wrote it and was cut off before the restart"),
    ("mirror not active", None, dict(INFO, RegistryConfig={"Mirrors": []}),
     f"the running Docker differs: registry mirror {MIRROR} is not active"),
    ("no registry config", None, {k: v for k, v in INFO.items() if k != "RegistryConfig"},
     f"registry mirror {MIRROR} is not active"),
]


@pytest.mark.parametrize("why,record_text,info,reason", NOT_APPLIED, ids=[row[0] for row in NOT_APPLIED])
def test_a_file_as_wanted_that_docker_has_not_applied_restarts_docker(why, record_text, info, reason):
    plan = docker.plan_configure(context(WITH_KEYS, CONVERGED, OURS, info=info, restart_pending=record_text))
    assert [a.summary.split(" (")[0] for a in plan.actions] == [f"restart Docker to apply {DAEMON_JSON}"], plan
    assert reason in plan.actions[0].summary


def test_a_data_root_docker_does_not_run_is_not_restarted_onto_without_a_record():
    plan = docker.plan_configure(context(WITH_KEYS, CONVERGED, OURS, info=dict(INFO, DockerRootDir="/var/lib/docker")))
    assert not plan.actions and plan.reason.startswith(f"{DAEMON_JSON} already has these keys"), plan
