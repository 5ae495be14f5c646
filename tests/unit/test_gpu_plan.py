"""containers.run's plan on a (derived) 8x H200 server: the GPUs each container gets, by UUID, with their index
and model; clashes, GPUs the server has not, too large counts refused before anything runs; the record on the
server; the arch check (an image whose CUDA has no kernels for the GPU is refused before it is pulled)."""
import base64
import json
from pathlib import Path

import pytest

from gpufleet import facts, gpu, gpu_assign, inventory
from gpufleet.errors import FleetError
from gpufleet.paths import probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import LocalSession
from tasks import containers
from tests.unit.test_facts import section

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
EIGHT = FIXTURES / "derived-8x-h200"  # derived from the real one-H200 captures: see its README.md
H200 = FIXTURES / "h200-driver580"
U = [g.uuid for g in gpu.parse_query_gpu((EIGHT / "query-gpu.csv").read_text())]
INFO = {"ServerVersion": "28.2.2", "DockerRootDir": "/var/lib/docker", "Runtimes": {"runc": {}, "nvidia": {}}}

HEAD = """
[local]
known_hosts = "/nonexistent/known_hosts"
[hosts.gpu8]
address = "10.0.0.8"
"""


def inventory_text(**gpus_by_container) -> str:
    text = HEAD
    for port, (name, value) in enumerate(gpus_by_container.items(), 2222):
        text += (f'[hosts.gpu8.containers.{name}]\nimage = "pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime"\n'
                 f"ssh_port = {port}\ngpus = {value}\n")
    return text


def context(inv_text: str, record: dict | None = None, runtimes=INFO["Runtimes"], gpus=EIGHT,
            more=lambda request: "") -> HostContext:
    inv = inventory.loads(inv_text)
    ctx = HostContext(inv.host("gpu8"), inv, LocalSession(), dry_run=True)
    request = probe_request(ctx)
    text = (section("os_release", (H200 / "os-release").read_text()) + section("uname", (H200 / "uname.txt").read_text())
            + section("arch", "amd64") + section("systemd", "") + section("packages", "")
            + section("docker_info", json.dumps({**INFO, "Runtimes": runtimes}))
            + section("nvidia_smi", (gpus / "query-gpu.csv").read_text())
            + section("nvidia_smi_list", (gpus / ("list-L.txt")).read_text())
            + section("nvidia_smi_table", "\n".join((H200 / "nvidia-smi.txt").read_text().splitlines()[:5]))
            + section("meminfo", (H200 / "meminfo.txt").read_text()))
    if record is not None:
        body = gpu_assign.render_record(record)
        text += section(f"file:{request.files.index(gpu_assign.GPU_RECORD)}",
                        "644 root root\n" + base64.b64encode(body).decode())
    ctx._facts = facts.parse_probe(text + more(request), request)
    return ctx


def summaries(ctx) -> list[str]:
    return [a.summary for a in containers.plan_run(ctx).actions]


def test_the_plan_names_each_containers_physical_gpus_and_records_them():
    ctx = context(inventory_text(alice="[0, 1]", bob="2", carol='"none"'))
    plan = summaries(ctx)
    runs = [s for s in plan if s.startswith("run container")]
    assert runs[0] == (f"run container alice (on GPU 0 NVIDIA H200 {U[0]}, GPU 1 NVIDIA H200 {U[1]}, shm 31g, "
                       "ssh port 2222)")
    assert runs[1] == (f"run container bob (on GPU 2 NVIDIA H200 {U[2]}, GPU 3 NVIDIA H200 {U[3]}, shm 31g, "
                       "ssh port 2223)")
    assert runs[2] == "run container carol (gpus = none, shm 31g, ssh port 2224)"
    assert plan[-1] == f"record which GPUs each container holds in {gpu_assign.GPU_RECORD}"
    doc = containers.resolved_spec(ctx, ctx.host.containers["alice"])
    assert doc["gpus"] == U[:2] and doc["gpu_path"] == "runtime"
    assert containers.resolved_spec(ctx, ctx.host.containers["carol"])["gpus"] == "none"


def test_the_record_written_is_what_each_container_holds():
    ctx = context(inventory_text(alice="[0, 1]", bob="2"))
    action = containers.gpu_record_action(ctx)
    written = {}
    action.known_result(type("F", (), {"files": written})())
    record = gpu_assign.parse_record(written[gpu_assign.GPU_RECORD].text)
    assert {name: (held["asked"], held["uuids"]) for name, held in record.items()} == {
        "alice": ([0, 1], U[:2]), "bob": (2, U[2:4])}
    # the same assignment on the next run: nothing to write
    again = context(inventory_text(alice="[0, 1]", bob="2"), record=record)
    assert containers.gpu_record_action(again) is None


def test_a_count_stays_on_its_recorded_gpus_from_run_to_run():
    record = {"bob": {"asked": 2, "uuids": [U[6], U[7]], "since": 1}}
    ctx = context(inventory_text(alice="[0, 1]", bob="2"), record=record)
    assert containers.resolved_spec(ctx, ctx.host.containers["bob"])["gpus"] == [U[6], U[7]]
    assert containers.gpu_record_action(ctx).summary.startswith("record which GPUs")  # alice is new in it


@pytest.mark.parametrize("gpus,message", [
    ({"alice": "[0, 1]", "bob": "[1]"}, f"containers alice and bob would both hold GPU 1 NVIDIA H200 {U[1]}"),
    ({"alice": "[8]"}, "container alice: gpus = [8] names GPU 8, which this server does not have (it has GPU 0"),
    ({"alice": "[0, 1, 2, 3, 4, 5]", "bob": "3"},
     "container bob: gpus = 3 but only 2 GPU(s) are free on this server (it has GPU 0 NVIDIA H200"),
])
def test_the_plan_refuses_before_anything_runs(gpus, message):
    with pytest.raises(FleetError) as refused:
        containers.plan_run(context(inventory_text(**gpus)))
    assert message in str(refused.value)


def test_share_gpus_on_a_container_or_the_host_lets_them_share():
    text = inventory_text(alice="[0, 1]", bob="[1]")
    shared = context(text.replace("gpus = [1]", "gpus = [1]\nshare_gpus = true"))
    assert containers.resolved_spec(shared, shared.host.containers["bob"])["gpus"] == [U[1]]
    host = context(text.replace('address = "10.0.0.8"', 'address = "10.0.0.8"\nshare_gpus = true'))
    assert containers.resolved_spec(host, host.host.containers["bob"])["gpus"] == [U[1]]


def test_a_gpu_list_without_the_toolkit_is_refused_like_all():
    with pytest.raises(FleetError, match=r"container alice: gpus = \[0\] but this host has no NVIDIA GPU with the "
                                         r"container toolkit registered"):
        containers.plan_run(context(inventory_text(alice="[0]"), runtimes={"runc": {}}))


def test_a_dry_run_counts_the_runtime_that_daemon_json_is_about_to_register():
    text = inventory_text(alice="[0]").replace('address = "10.0.0.8"',
                                               'address = "10.0.0.8"\ndaemon_json = { runtimes = { nvidia = { path = "runc" } } }')
    ctx = context(text, runtimes={"runc": {}})
    assert containers.resolved_spec(ctx, ctx.host.containers["alice"])["gpus"] == [U[0]]
    ctx.dry_run = False  # a real run has applied docker.configure before, and reads the daemon again
    with pytest.raises(FleetError, match="container toolkit registered"):
        containers.resolved_spec(ctx, ctx.host.containers["alice"])


def test_a_gpu_change_re_creates_the_container():
    ctx = context(inventory_text(alice="[0, 1]"))
    new = containers.resolved_spec(ctx, ctx.host.containers["alice"])
    old = dict(new, gpus="all")
    assert containers.spec_differences(old, new) == [f"gpus: 'all' -> {U[:2]!r}"]


# --- docker run: the runtime path's argv (issue 19's gpu_path adds CDI beside it) ---

def test_docker_run_passes_the_uuids_as_one_device_field():
    ctx = context(inventory_text(alice="[1, 0]"))
    argv = containers.run_argv("alice", containers.resolved_spec(ctx, ctx.host.containers["alice"]))
    at = argv.index("--gpus")
    assert argv[at - 2:at + 2] == ["--runtime", "nvidia", "--gpus", f'"device={U[0]},{U[1]}"']


# --- arch: an image without kernels for the GPU it gets ---

def test_an_image_too_old_for_hopper_is_refused_before_the_pull_with_a_tag_that_works():
    text = inventory_text(alice="[0]").replace("pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime",
                                               "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime")
    with pytest.raises(FleetError) as refused:
        containers.plan_run(context(text))
    assert str(refused.value) == (
        "container alice: image pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime is built for CUDA 11.6, which has no "
        "kernels for GPU 0 (NVIDIA H200, compute capability 9.0, Hopper sm_90 needs CUDA >= 11.8): use "
        "pytorch/pytorch:2.1.0-cuda11.8-cudnn8-runtime, or set allow_arch_mismatch = true")
    allowed = context(text.replace("gpus = [0]", "gpus = [0]\nallow_arch_mismatch = true"))
    plan = containers.plan_run(allowed)
    pull = plan.actions[1]
    assert pull.summary == "pull pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime"
    assert pull.warning.endswith("(allowed by allow_arch_mismatch)")


def test_a_container_without_gpus_is_not_arch_checked():
    text = inventory_text(alice='"none"').replace("2.7.0-cuda12.8-cudnn9-runtime", "1.13.1-cuda11.6-cudnn8-runtime")
    assert summaries(context(text))[1] == "pull pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime"


def test_a_running_container_as_specified_is_not_refused_for_its_image_and_its_host_goes_on():
    """An old image already running on GPU 0 (made while allow_arch_mismatch was on, say) does not stop the
    plan of the server's other containers: CUDA is checked before a pull or a run, not of what runs."""
    old_image = "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime"
    text = inventory_text(old="[0]", new="[1]").replace("pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime", old_image, 1)
    bare = context(text)
    doc = containers.resolved_spec(bare, bare.host.containers["old"])
    listing = json.dumps({"Name": "/old", "State": {"Running": True},
                          "Config": {"Labels": {facts.MANAGED_LABEL: "old", containers.SPEC_LABEL: json.dumps(doc)}},
                          "Mounts": [{"Destination": containers.IN_CONTAINER_DIR, "RW": False}]})
    ctx = context(text, more=lambda request: section("containers", listing) + section(
        f"image:{request.images.index(old_image)}", json.dumps({"Id": "sha256:1", "Config": {"Env": []}})))
    planned = summaries(ctx)
    assert any(s.startswith("run container new") for s in planned), planned
    assert not any(" old" in s and ("re-create" in s or "pull" in s) for s in planned), planned
