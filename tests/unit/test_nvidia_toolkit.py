"""nvidia_toolkit = auto / always / never, the runtime in daemon.json wherever the toolkit is installed,
and `--runtime nvidia --gpus all` for GPU containers: plans from probe outputs in the real formats
(tests/fixtures/gpu, osinfo, openpgp), no host needed."""
import base64
import json
from pathlib import Path

import pytest

from gpufleet import facts, inventory
from gpufleet.errors import FleetError
from gpufleet.paths import NVIDIA_KEYRING, NVIDIA_SOURCES, probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import LocalSession
from tasks import containers, docker, nvidia
from tests.goldens import check_golden

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "docker_run"
KEY = FIXTURES / "openpgp" / "rsa3072-with-subkeys.asc"
KEY_FINGERPRINT = "0D816186420A7329C0C61E8C11797716AACD5550"
MIRROR = "http://10.77.53.5:8080/libnvidia-container"


section = facts.frame


def readfile(content: bytes | None, mode="644") -> str:
    return "absent" if content is None else f"{mode} root root\n{base64.b64encode(content).decode()}"


def host_context(setting="auto", gpu="smi", packages=(), runtimes=("runc",), files=None, gpus_key="auto"):
    """A dry-run context whose facts are a Debian 12 probe with `gpu` = smi | lspci | none."""
    inv = inventory.loads(f"""
[defaults]
nvidia_toolkit = "{setting}"
nvidia_mirror = "{MIRROR}"
nvidia_key_fingerprint = "{KEY_FINGERPRINT}"
[hosts.gpu1]
address = "10.0.0.1"
[hosts.gpu1.containers.dev]
image = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
ssh_port = 2222
gpus = "{gpus_key}"
""")
    ctx = HostContext(inv.host("gpu1"), inv, LocalSession(), dry_run=True)
    request = probe_request(ctx)
    installed = ["curl", "ca-certificates", "docker.io", *packages]
    info = {"ServerVersion": "20.10.24", "DockerRootDir": "/var/lib/docker", "Images": 0, "Containers": 0,
            "ContainersRunning": 0, "Runtimes": {r: {} for r in runtimes}}
    text = (section("os_release", (FIXTURES / "osinfo" / "debian-12.os-release").read_text())
            + section("uname", "Linux gpu1 6.1.0-27-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 x86_64 GNU/Linux")
            + section("arch", "amd64") + section("systemd", "")
            + section("packages", "".join(f"{p}\tii \t1.0\n" for p in installed))
            + section("docker_info", json.dumps(info))
            + section("meminfo", "MemTotal:       65856412 kB"))
    if gpu == "smi":
        text += section("nvidia_smi", (FIXTURES / "gpu" / "query-noheader-nounits-2xa100.csv").read_text())
        text += section("nvidia_smi_table", (FIXTURES / "gpu" / "smi-head5-2xa100-535.txt").read_text())
    else:
        text += section("nvidia_smi", "sh: 1: nvidia-smi: not found", 127)
        if gpu == "lspci":
            text += section("lspci", (FIXTURES / "gpu" / "lspci-nn-rtx4090.txt").read_text())
    for i, path in enumerate(request.files):
        text += section(f"file:{i}", readfile((files or {}).get(path)))
    ctx._facts = facts.parse_probe(text, request)
    return ctx


TOOLKIT_IN_PLACE = {NVIDIA_KEYRING: KEY.read_bytes(), "/etc/apt/keyrings": b"",
                    NVIDIA_SOURCES: (f"# Managed by gpufleet (inventory key nvidia_mirror).\nTypes: deb\n"
                                     f"URIs: {MIRROR}/stable/deb/$(ARCH)\nSuites: /\nSigned-By: {NVIDIA_KEYRING}\n").encode()}
FETCH = (f"fetch NVIDIA's signing key from {MIRROR}/gpgkey, check it is {KEY_FINGERPRINT} (nvidia_key_fingerprint), "
         f"write {NVIDIA_KEYRING}")

MODES = [
    # (id, nvidia_toolkit, GPU seen by, toolkit in place, expected: ("skipped"|"ok"|"change", text))
    ("never with a GPU", "never", "smi", False, ("skipped", "nvidia_toolkit = never")),
    ("never, installed by hand", "never", "none", True, ("skipped", "nvidia_toolkit = never")),
    ("auto without a GPU", "auto", "none", False, ("skipped", "no NVIDIA GPU (nvidia_toolkit = auto)")),
    ("auto with a GPU", "auto", "smi", False, ("change", FETCH)),
    ("auto, converged", "auto", "smi", True,
     ("ok", "nvidia-container-toolkit 1.0 installed for 2 GPU(s), driver 535.161.07")),
    ("always without a GPU (lab servers)", "always", "none", False, ("change", FETCH)),
    ("always, GPU without a driver", "always", "lspci", False, ("change", FETCH)),
    ("always, converged", "always", "none", True,
     ("ok", "nvidia-container-toolkit 1.0 installed (nvidia_toolkit = always; no working GPU seen)")),
]


@pytest.mark.parametrize("setting,gpu,in_place,expected", [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_nvidia_toolkit_setting(setting, gpu, in_place, expected):
    ctx = host_context(setting, gpu, packages=["nvidia-container-toolkit"] if in_place else [],
                       files=TOOLKIT_IN_PLACE if in_place else None)
    plan = nvidia.plan_toolkit(ctx)
    kind, text = expected
    if kind == "skipped":
        assert plan.skip == text and not plan.actions
    elif kind == "ok":
        assert not plan.skip and not plan.actions and plan.reason == text
    else:
        assert [a.summary for a in plan.actions] == [
            text, f"create {NVIDIA_SOURCES}", "install nvidia-container-toolkit, nvidia-container-toolkit-base, "
            "libnvidia-container-tools, libnvidia-container1 (those the mirror has) at one version: the newest the "
            f"mirror has, read after apt-get update from {MIRROR}"]


def test_auto_refuses_a_gpu_without_a_working_driver():
    with pytest.raises(FleetError, match=r"an NVIDIA GPU is present .* but nvidia-smi does not work"):
        nvidia.plan_toolkit(host_context("auto", "lspci"))


RUNTIME = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}


@pytest.mark.parametrize("gpu,installed,registered", [
    ("smi", True, True), ("none", True, True), ("smi", False, False), ("none", False, False)])
def test_daemon_json_registers_the_runtime_wherever_the_toolkit_is_installed(gpu, installed, registered):
    ctx = host_context("always", gpu, packages=["nvidia-container-toolkit"] if installed else [])
    assert (docker.wanted_daemon_keys(ctx).get("runtimes") == RUNTIME) is registered
    plan = docker.plan_configure(ctx)
    assert bool(plan.actions) is registered
    if registered:
        assert plan.actions[0].diff == '+ runtimes.nvidia: {"args": [], "path": "nvidia-container-runtime"}\n'


CONTAINERS = [
    # (id, GPU, runtimes docker info lists, gpus key, expected (gpus, gpu_path) or an error)
    ("GPU and runtime", "smi", ("runc", "nvidia"), "auto", ("all", "runtime")),
    ("GPU, runtime not registered", "smi", ("runc",), "auto", ("none", None)),
    ("runtime but no GPU (always)", "none", ("runc", "nvidia"), "auto", ("none", None)),
    ("gpus = none", "smi", ("runc", "nvidia"), "none", ("none", None)),
    ("gpus = all without a GPU", "none", ("runc", "nvidia"), "all", "gpus = 'all' but this host has no NVIDIA GPU"),
]


@pytest.mark.parametrize("gpu,runtimes,gpus_key,expected", [c[1:] for c in CONTAINERS], ids=[c[0] for c in CONTAINERS])
def test_gpu_containers_run_with_the_nvidia_runtime(gpu, runtimes, gpus_key, expected):
    ctx = host_context("auto", gpu, runtimes=runtimes, gpus_key=gpus_key)
    spec = ctx.host.containers["dev"]
    if isinstance(expected, str):
        with pytest.raises(FleetError, match=expected):
            containers.resolved_spec(ctx, spec)
        return
    doc = containers.resolved_spec(ctx, spec)
    assert (doc["gpus"], doc.get("gpu_path")) == expected
    argv = containers.run_argv("dev", doc)
    assert ("--runtime" in argv) is (expected[1] == "runtime")
    if expected[0] == "all":
        at = argv.index("--runtime")
        assert argv[at:at + 4] == ["--runtime", "nvidia", "--gpus", "all"]


def test_a_gpu_container_created_without_the_runtime_is_re_created():
    ctx = host_context("auto", "smi", runtimes=("runc", "nvidia"))
    new = containers.resolved_spec(ctx, ctx.host.containers["dev"])
    old = {k: v for k, v in new.items() if k != "gpu_path"}
    assert containers.spec_differences(old, new) == ["gpu_path: None -> 'runtime'"]


@pytest.mark.parametrize("gpu,runtimes", [("smi", ("runc", "nvidia")), ("none", ("runc",))], ids=["gpu", "cpu"])
def test_docker_run_argv_golden(gpu, runtimes):
    ctx = host_context("auto", gpu, runtimes=runtimes)
    doc = containers.resolved_spec(ctx, ctx.host.containers["dev"])
    check_golden(GOLDEN / f"{gpu if gpu == 'none' else 'gpu'}.argv",
                 "".join(arg + "\n" for arg in containers.run_argv("dev", doc)).encode())
