"""The GPU path (nvidia runtime or CDI devices) per engine, toolkit and setting; the docker run arguments
it gives; the toolkit's CDI spec kept current; the toolkit's packages at one version; `ulimit_nofile`.
Parsers on captured outputs and hand-written ones in the record's shapes (tests/fixtures/gpu/toolkit)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from gpufleet import facts, gpu, inventory, toolkit
from gpufleet.errors import FleetError, InventoryError
from tasks import containers, doctor, nvidia
from tests.goldens import check_golden
from tests.unit.test_nvidia_toolkit import TOOLKIT_IN_PLACE, host_context

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "toolkit"
U1, U2 = "GPU-3f2a9c1e-5b7d-4e0a-9c21-7d3e8f1a2b3c", "GPU-8b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"
MIG = "MIG-5c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"
H200 = "GPU-de2bd871-34b9-9b62-fb4a-85bede93097e"


# --- the one function that turns (gpu_path, gpus) into docker run arguments ---

RUN_ARGS = [
    ("runtime", "none", []),
    ("cdi", "none", []),
    ("runtime", "all", ["--runtime", "nvidia", "--gpus", "all"]),
    ("runtime", [U1], ["--runtime", "nvidia", "--gpus", f'"device={U1}"']),
    ("runtime", [U1, U2], ["--runtime", "nvidia", "--gpus", f'"device={U1},{U2}"']),
    ("runtime", [MIG], ["--runtime", "nvidia", "--gpus", f'"device={MIG}"']),
    ("cdi", "all", ["--device", "nvidia.com/gpu=all"]),
    ("cdi", [U1], ["--device", f"nvidia.com/gpu={U1}"]),
    ("cdi", [U1, U2], ["--device", f"nvidia.com/gpu={U1}", "--device", f"nvidia.com/gpu={U2}"]),
    ("cdi", [MIG], ["--device", f"nvidia.com/gpu={MIG}"]),
]


@pytest.mark.parametrize("path,gpus,argv", RUN_ARGS)
def test_gpu_run_args(path, gpus, argv):
    assert gpu.gpu_run_args(path, gpus) == argv


def test_a_device_list_is_the_shell_form_of_the_quoted_csv():
    import shlex
    assert shlex.split(f"""--gpus '"device={U1},{U2}"'""") == gpu.gpu_run_args("runtime", [U1, U2])[2:]


@pytest.mark.parametrize("path,gpus", [("legacy", "all"), ("cdi", []), ("cdi", "0"), ("runtime", ["0"]),
                                       ("runtime", [f"{U1},{U2}"]), ("cdi", ['GPU-1"x'])])
def test_gpu_run_args_refuses_what_is_not_a_path_or_uuids(path, gpus):
    with pytest.raises(ValueError):
        gpu.gpu_run_args(path, gpus)


# --- the path per engine, toolkit and setting ---

INFO_29 = json.loads((FIXTURES / "docker-info-29-cdi.json").read_text())
INFO_28_1 = json.loads((FIXTURES / "docker-info-28.1-cdi-off.json").read_text())
INFO_26 = {"ServerVersion": "26.1.5+dfsg1", "CDISpecDirs": [], "Runtimes": {"runc": {}, "nvidia": {}}}
INFO_28_2_OFF = dict(INFO_29, ServerVersion="28.2.2", CDISpecDirs=None)

PATHS = [
    # (id, setting, docker info, toolkit version, expected path or an error)
    ("auto: Docker 29 + toolkit 1.20", "auto", INFO_29, "1.20.0", "cdi"),
    ("auto: Docker 29 + toolkit 1.18", "auto", INFO_29, "1.18.0", "cdi"),
    ("auto: Docker 29 + toolkit 1.17", "auto", INFO_29, "1.17.8", "runtime"),
    ("auto: Docker 29, no toolkit yet", "auto", INFO_29, "", "runtime"),
    ("auto: Docker 28.1 (CDI off)", "auto", INFO_28_1, "1.20.0", "runtime"),
    ("auto: Docker 28.2 with CDI switched off", "auto", INFO_28_2_OFF, "1.20.0", "runtime"),
    ("auto: Docker 26 + toolkit 1.18 (lab gpu3)", "auto", INFO_26, "1.18.0", "runtime"),
    ("runtime on Docker 29", "runtime", INFO_29, "1.20.0", "runtime"),
    ("runtime on Docker 26", "runtime", INFO_26, "1.18.0", "runtime"),
    ("cdi on Docker 29 + 1.18", "cdi", INFO_29, "1.18.0", "cdi"),
    ("cdi on Docker 26", "cdi", INFO_26, "1.18.0", "Docker 26.1.5\\+dfsg1 \\(CDI needs 28.2\\+\\)"),
    ("cdi with toolkit 1.17", "cdi", INFO_29, "1.17.8", "toolkit 1.17.8 \\(CDI here needs 1.18\\+\\)"),
    ("cdi with CDI off", "cdi", INFO_28_2_OFF, "1.20.0", "CDI is off in the engine"),
]


@pytest.mark.parametrize("setting,info,ctk,expected", [p[1:] for p in PATHS], ids=[p[0] for p in PATHS])
def test_choose_gpu_path(setting, info, ctk, expected):
    if expected in ("runtime", "cdi"):
        assert gpu.choose_gpu_path(setting, info, ctk)[0] == expected
    else:
        with pytest.raises(ValueError, match=expected):
            gpu.choose_gpu_path(setting, info, ctk)


@pytest.mark.parametrize("text,version", [("5:29.1.3-1~ubuntu.24.04~noble", (29, 1, 3)), ("26.1.5+dfsg1", (26, 1, 5)),
                                          ("28.2.2", (28, 2, 2)), ("1.18.0-1", (1, 18, 0)), ("", ())])
def test_version_tuple(text, version):
    assert gpu.version_tuple(text) == version


@pytest.mark.parametrize("name,rc,version", [("ctk-version-1.18.0-lab-build.txt", 0, "1.18.0"),
                                             ("ctk-version-1.20.0.txt", 0, "1.20.0"),
                                             ("ctk-version-1.20.0.txt", 127, "")])
def test_parse_ctk_version(name, rc, version):
    assert gpu.parse_ctk_version(rc, (FIXTURES / name).read_text()) == version


def test_parse_ctk_version_of_no_toolkit():
    assert gpu.parse_ctk_version(127, "sh: 1: nvidia-ctk: not found\n") == ""


def test_cdi_devices_from_docker_info():
    assert gpu.cdi_devices(INFO_29) == ["nvidia.com/gpu=0", f"nvidia.com/gpu={H200}", "nvidia.com/gpu=all"]
    assert gpu.cdi_devices(INFO_26) == [] and gpu.cdi_devices(None) == []


# --- the resolved spec keeps the path; run_argv uses it ---

REFRESH_UNITS_ENABLED = (FIXTURES / "systemctl-show-refresh-units-enabled.txt").read_text()


def gpu_host(setting="auto", info=None, ctk="1.20.0", gpus_key="auto", refresh_units=True):
    """The dry-run context of test_nvidia_toolkit (a GPU host) with another engine and toolkit; systemd with
    the toolkit's refresh units enabled, or (refresh_units=False) no systemd."""
    ctx = host_context("auto", "smi", runtimes=("runc", "nvidia"), gpus_key=gpus_key)
    ctx.host.settings["gpu_path"] = setting
    ctx._facts.docker_info = dict(info or INFO_29)
    ctx._facts.toolkit_version = ctk
    ctx._facts.systemd = refresh_units
    ctx._facts.cdi_units = gpu.parse_unit_states(REFRESH_UNITS_ENABLED if refresh_units else "")
    return ctx


SPECS = [
    # (id, gpu_path, docker info, toolkit, refresh units, expected gpu_path in the spec, expected GPU args)
    ("Docker 29 + 1.20, auto", "auto", INFO_29, "1.20.0", True, "cdi", ["--device", "nvidia.com/gpu=all"]),
    # /var/run/cdi is a tmpfs: where nothing makes the spec again at boot, the runtime (its own spec per start)
    ("Docker 29 + 1.20, auto, no systemd", "auto", INFO_29, "1.20.0", False, "runtime",
     ["--runtime", "nvidia", "--gpus", "all"]),
    ("Docker 29 + 1.20, cdi, no systemd", "cdi", INFO_29, "1.20.0", False, "cdi", ["--device", "nvidia.com/gpu=all"]),
    ("Docker 29 + 1.20, runtime", "runtime", INFO_29, "1.20.0", True, "runtime",
     ["--runtime", "nvidia", "--gpus", "all"]),
    ("Docker 26 + 1.18, auto", "auto", INFO_26, "1.18.0", True, "runtime", ["--runtime", "nvidia", "--gpus", "all"]),
]


@pytest.mark.parametrize("setting,info,ctk,units,path,args", [s[1:] for s in SPECS], ids=[s[0] for s in SPECS])
def test_resolved_spec_keeps_the_gpu_path_and_run_argv_uses_it(setting, info, ctk, units, path, args):
    ctx = gpu_host(setting, info, ctk, refresh_units=units)
    doc = containers.resolved_spec(ctx, ctx.host.containers["dev"])
    assert doc["gpu_path"] == path and "runtime" not in doc
    argv = containers.run_argv("dev", doc)
    at = argv.index("--entrypoint")
    assert argv[at - len(args):at] == args


def test_a_cpu_container_has_no_gpu_path():
    ctx = gpu_host(gpus_key="none")
    doc = containers.resolved_spec(ctx, ctx.host.containers["dev"])
    assert "gpu_path" not in doc and not {"--gpus", "--device", "--runtime"} & set(containers.run_argv("dev", doc))


def test_a_new_gpu_path_re_creates_the_container():
    old = containers.resolved_spec(gpu_host("runtime"), gpu_host().host.containers["dev"])
    new = containers.resolved_spec(gpu_host("auto"), gpu_host().host.containers["dev"])
    assert containers.spec_differences(old, new) == ["gpu_path: 'runtime' -> 'cdi'"]


def test_a_container_made_before_gpu_path_with_the_runtime_is_not_re_created_for_it():
    new = containers.resolved_spec(gpu_host("runtime"), gpu_host().host.containers["dev"])
    old = {**{k: v for k, v in new.items() if k != "gpu_path"}, "runtime": "nvidia"}
    assert containers.spec_differences(old, new) == []
    cdi = containers.resolved_spec(gpu_host("cdi"), gpu_host().host.containers["dev"])
    assert containers.spec_differences(old, cdi) == ["gpu_path: 'runtime' -> 'cdi'"]


def test_gpu_path_cdi_on_an_engine_without_it_is_one_clear_error():
    ctx = gpu_host("cdi", INFO_26, "1.18.0")
    with pytest.raises(FleetError, match=r"host gpu1: gpu_path = 'cdi' but this host has Docker 26.1.5"):
        containers.resolved_spec(ctx, ctx.host.containers["dev"])


# --- the toolkit's CDI spec ---

SPEC = (FIXTURES / "cdi-spec-h200-580.yaml").read_text()

SPEC_STATES = [
    # (id, spec text, spec mtime, nvidia-ctk mtime, driver, GPU UUIDs, expected problem ("" = current))
    ("current", SPEC, 2000, 1000, "580.159.04", [H200], ""),
    ("missing", None, None, 1000, "580.159.04", [H200], "/var/run/cdi/nvidia.yaml is missing"),
    ("older than nvidia-ctk", SPEC, 900, 1000, "580.159.04", [H200], "older than the toolkit's nvidia-ctk"),
    ("another driver", SPEC, 2000, 1000, "580.160.01", [H200], "made for driver 580.159.04, not 580.160.01"),
    ("a GPU it does not name", SPEC, 2000, 1000, "580.159.04", [H200, U1], f"does not name {U1}"),
    ("WSL (no versioned libraries)", SPEC.replace(".so.580.159.04", ".so.1"), 2000, 1000, "580.159.04", [H200], ""),
]


@pytest.mark.parametrize("spec,spec_mtime,ctk_mtime,driver,uuids,problem", [s[1:] for s in SPEC_STATES],
                         ids=[s[0] for s in SPEC_STATES])
def test_cdi_spec_problem(spec, spec_mtime, ctk_mtime, driver, uuids, problem):
    found = gpu.cdi_spec_problem(spec, spec_mtime, ctk_mtime, driver, uuids)
    assert (problem in found and found) if problem else found == ""


# `systemctl show` on a lab server (Debian 13): the lab's 1.18 packages (no units), NVIDIA's 1.20 units
# installed, then after the commands the plan runs to enable them (tests/integration/test_gpu_path_lab.py)
SHOW_NOT_FOUND = (FIXTURES / "systemctl-show-refresh-units-not-found.txt").read_text()
SHOW_LOADED = (FIXTURES / "systemctl-show-refresh-units-disabled.txt").read_text()
SHOW_ENABLED = (FIXTURES / "systemctl-show-refresh-units-enabled.txt").read_text()


def cdi_host(systemd=True, units="", spec=SPEC, spec_mtime=2000, info=None, setting="auto"):
    ctx = gpu_host(setting, info)
    f = ctx._facts
    f.systemd, f.cdi_units = systemd, gpu.parse_unit_states(units)
    f.cdi_spec = spec
    f.cdi_mtimes = {k: v for k, v in (("/var/run/cdi/nvidia.yaml", spec_mtime), ("/usr/bin/nvidia-ctk", 1000)) if v}
    f.gpus = [gpu.Gpu(0, "NVIDIA H200", H200, "580.159.04")]
    f.gpu_driver = "580.159.04"
    return ctx


GENERATE = "generate /var/run/cdi/nvidia.yaml (/var/run/cdi/nvidia.yaml is missing): nvidia-ctk cdi generate"
ENABLE = ("enable nvidia-cdi-refresh.path and nvidia-cdi-refresh.service (they regenerate /var/run/cdi/nvidia.yaml "
          "on driver and toolkit changes)")
CDI_PLANS = [
    # (id, systemd, units (systemctl show), spec, setting, docker info, expected: summaries, or "ok:"/"skip:" text)
    ("no systemd (WSL2, the GPU host), cdi asked, no spec", False, "", None, "cdi", INFO_29, [GENERATE]),
    ("no systemd, auto: the runtime", False, "", None, "auto", INFO_29, "skip:containers use the nvidia runtime "
     "(nvidia runtime: nothing makes a CDI spec again after a reboot here (no systemd with nvidia-cdi-refresh); "
     "the runtime makes its own as each container starts)"),
    ("no systemd, spec current", False, "", SPEC, "cdi", INFO_29,
     "ok:/var/run/cdi/nvidia.yaml is current (driver 580.159.04, 1 GPU(s)); no systemd: the tool regenerates it"),
    ("systemd without the units (toolkit < 1.18, the lab's build)", True, SHOW_NOT_FOUND, None, "cdi", INFO_29,
     [GENERATE]),
    ("systemd with the units, disabled, no spec", True, SHOW_LOADED, None, "auto", INFO_29,
     [ENABLE, GENERATE]),
    ("systemd with the units enabled, spec of another driver", True, SHOW_ENABLED,
     SPEC.replace("580.159.04", "575.57.08"), "auto", INFO_29,
     ["generate /var/run/cdi/nvidia.yaml (/var/run/cdi/nvidia.yaml was made for driver 575.57.08, not 580.159.04): "
      "nvidia-ctk cdi generate"]),
    ("systemd with the units enabled, spec current", True, SHOW_ENABLED, SPEC, "auto", INFO_29,
     "ok:/var/run/cdi/nvidia.yaml is current (driver 580.159.04, 1 GPU(s)); nvidia-cdi-refresh keeps it"),
    ("the nvidia runtime is used", False, "", None, "runtime", INFO_29,
     "skip:containers use the nvidia runtime (gpu_path = runtime)"),
    ("Docker 26", True, SHOW_LOADED, None, "auto", INFO_26, "skip:containers use the nvidia runtime (nvidia runtime: "
     "Docker 26.1.5+dfsg1 (CDI needs 28.2+), CDI is off in the engine (docker info lists no CDISpecDirs))"),
]


@pytest.mark.parametrize("systemd,units,spec,setting,info,expected", [p[1:] for p in CDI_PLANS],
                         ids=[p[0] for p in CDI_PLANS])
def test_plan_cdi(systemd, units, spec, setting, info, expected):
    plan = nvidia.plan_cdi(cdi_host(systemd, units, spec, info=info, setting=setting))
    if isinstance(expected, list):
        assert [a.summary for a in plan.actions] == expected
    elif expected.startswith("ok:"):
        assert not plan.actions and not plan.skip and plan.reason == expected[3:]
    else:
        assert not plan.actions and plan.skip == expected[5:]


def test_plan_cdi_skips_a_host_without_a_working_gpu():
    ctx = host_context("always", "none")
    assert nvidia.plan_cdi(ctx).skip == "no working NVIDIA GPU: no CDI spec to make"


def test_parse_unit_states():
    assert gpu.parse_unit_states(SHOW_NOT_FOUND)["nvidia-cdi-refresh.path"]["LoadState"] == "not-found"
    assert gpu.parse_unit_states(SHOW_ENABLED)["nvidia-cdi-refresh.service"]["UnitFileState"] == "enabled"
    assert gpu.parse_unit_states("System has not been booted with systemd as init system (PID 1). Can't operate.") == {}


def test_parse_mtimes():
    assert gpu.parse_mtimes("1765070000 /var/run/cdi/nvidia.yaml\n1764900000 /usr/bin/nvidia-ctk\n"
                            "stat: cannot statx '/nope': No such file or directory\n") == {
        "/var/run/cdi/nvidia.yaml": 1765070000, "/usr/bin/nvidia-ctk": 1764900000}


# --- the toolkit's packages at one version ---

MADISON = facts.parse_madison((FIXTURES / "madison-toolkit-nvidia-repo.txt").read_text())
LAB_MADISON = {"nvidia-container-toolkit": ["1.18.0-1"], "nvidia-container-toolkit-base": ["1.18.0-1"]}
ALL_AT = lambda v: {p: v for p in facts.TOOLKIT_PACKAGES}  # noqa: E731


def test_parse_madison():
    assert MADISON["nvidia-container-toolkit"] == ["1.20.0-1", "1.19.0-1", "1.18.0-1"]
    assert set(MADISON) == set(facts.TOOLKIT_PACKAGES)
    assert facts.parse_madison("N: Unable to locate package libnvidia-container1\n") == {}


PIN_ALL_120 = ("install nvidia-container-toolkit=1.20.0-1, nvidia-container-toolkit-base=1.20.0-1, "
               "libnvidia-container-tools=1.20.0-1, libnvidia-container1=1.20.0-1")
PINS = [
    # (id, nvidia_toolkit_version, installed, madison, lists current, expected change ("" = in place) or error)
    ("fresh host: resolved after apt-get update", "", {}, {}, False,
     "install nvidia-container-toolkit, nvidia-container-toolkit-base, libnvidia-container-tools, "
     "libnvidia-container1 (those the mirror has) at one version: the newest the mirror has, read after apt-get update"),
    ("not installed: the newest", "", {}, MADISON, True, PIN_ALL_120 + " (not installed; the newest the mirror has)"),
    ("an older one installed: the newest", "", ALL_AT("1.18.0-1"), MADISON, True,
     PIN_ALL_120 + " (1.18.0-1 installed; the newest the mirror has)"),
    ("the newest installed", "", ALL_AT("1.20.0-1"), MADISON, True, ""),
    ("mixed versions", "", {**ALL_AT("1.20.0-1"), "nvidia-container-toolkit-base": "1.19.0-1"}, MADISON, True,
     PIN_ALL_120 + " (nvidia-container-toolkit-base 1.19.0-1; the newest the mirror has)"),
    ("pinned by upstream version", "1.18.0", ALL_AT("1.20.0-1"), MADISON, True,
     "install nvidia-container-toolkit=1.18.0-1, nvidia-container-toolkit-base=1.18.0-1, libnvidia-container-tools="
     "1.18.0-1, libnvidia-container1=1.18.0-1 (1.20.0-1 installed; the version nvidia_toolkit_version = '1.18.0' names)"),
    ("pinned and in place", "1.18.0-1", ALL_AT("1.18.0-1"), MADISON, True, ""),
    ("pinned to what the mirror lacks", "1.17.8", {}, MADISON, True,
     "nvidia_toolkit_version = '1.17.8', but the mirror has nvidia-container-toolkit 1.20.0-1, 1.19.0-1, 1.18.0-1"),
    ("the lab's mirror (no libnvidia-container)", "", {}, LAB_MADISON, True,
     "install nvidia-container-toolkit=1.18.0-1, nvidia-container-toolkit-base=1.18.0-1 (not installed; "
     "the newest the mirror has)"),
    ("the lab's mirror, in place", "", {"nvidia-container-toolkit": "1.18.0-1",
                                        "nvidia-container-toolkit-base": "1.18.0-1"}, LAB_MADISON, True, ""),
    ("installed, apt lists emptied", "", ALL_AT("1.18.0-1"), {}, True, ""),
]


@pytest.mark.parametrize("wanted,installed,available,current,expected", [p[1:] for p in PINS], ids=[p[0] for p in PINS])
def test_toolkit_packages_at_one_version(wanted, installed, available, current, expected):
    if expected.startswith("nvidia_toolkit_version"):
        with pytest.raises(FleetError, match=expected):
            toolkit.plan(wanted, installed, available, current)
        return
    assert toolkit.plan(wanted, installed, available, current).change == expected


def test_the_toolkit_plan_says_which_version():
    ctx = host_context("auto", "smi", files=TOOLKIT_IN_PLACE)
    ctx._facts.toolkit_versions = MADISON
    ctx.host.settings["nvidia_toolkit_version"] = "1.19.0"
    assert [a.summary for a in nvidia.plan_toolkit(ctx).actions] == [
        "install nvidia-container-toolkit=1.19.0-1, nvidia-container-toolkit-base=1.19.0-1, libnvidia-container-tools="
        "1.19.0-1, libnvidia-container1=1.19.0-1 (not installed; the version nvidia_toolkit_version = '1.19.0' names) "
        "from http://10.77.53.5:8080/libnvidia-container"]


# --- ulimit_nofile ---

def inventory_with(line: str):
    return inventory.loads(f"""
[hosts.gpu1]
address = "10.0.0.1"
[hosts.gpu1.containers.dev]
image = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
ssh_port = 2222
{line}
""")


@pytest.mark.parametrize("line,value", [("", "1048576:1048576"), ("ulimit_nofile = 65536", "65536:65536"),
                                        ('ulimit_nofile = "4096:20000"', "4096:20000")])
def test_ulimit_nofile(line, value):
    spec = inventory_with(line).host("gpu1").containers["dev"]
    assert spec.ulimit_nofile == value
    ctx = host_context("auto", "none")
    ctx.host.containers["dev"] = spec
    doc = containers.resolved_spec(ctx, spec)
    assert doc["ulimit_nofile"] == value
    argv = containers.run_argv("dev", doc)
    assert argv[argv.index("--ulimit") + 1] == f"nofile={value}"


@pytest.mark.parametrize("value", ['"20000:4096"', "100", '"lots"', "true", '"1024:2000000000"', '"-1:1024"'])
def test_ulimit_nofile_refuses_bad_values(value):
    with pytest.raises(InventoryError, match=r"hosts\.gpu1\.containers\.dev\.ulimit_nofile"):
        inventory_with(f"ulimit_nofile = {value}")


def test_a_new_open_files_limit_re_creates_the_container():
    ctx = host_context("auto", "none")
    old = containers.resolved_spec(ctx, ctx.host.containers["dev"])
    spec = inventory_with('ulimit_nofile = "4096:20000"').host("gpu1").containers["dev"]
    new = containers.resolved_spec(ctx, spec)
    assert containers.spec_differences(old, new) == ["ulimit_nofile: '1048576:1048576' -> '4096:20000'"]


@pytest.mark.parametrize("line,message", [('gpu_path = "legacy"', "hosts.gpu1.gpu_path"),
                                          ('nvidia_toolkit_version = "-1.18"', "hosts.gpu1.nvidia_toolkit_version")])
def test_bad_host_settings(line, message):
    with pytest.raises(InventoryError, match=message.replace(".", r"\.")):
        inventory.loads(f'[hosts.gpu1]\naddress = "10.0.0.1"\n{line}\n')



# --- doctor reads the engine's own report ---

DOCTOR = [
    # (id, gpu_path, docker info, expected status, words in the detail)
    ("CDI devices listed", "cdi", INFO_29, "pass", f"docker info lists nvidia.com/gpu=0, nvidia.com/gpu={H200}"),
    ("CDI, the GPU not discovered", "cdi", dict(INFO_29, DiscoveredDevices=INFO_29["DiscoveredDevices"][:1]), "fail",
     f"not nvidia.com/gpu=all, {H200}"),
    ("CDI, no devices at all", "cdi", dict(INFO_29, DiscoveredDevices=[]), "fail", "no nvidia.com/gpu device"),
    ("the runtime registered", "auto", INFO_26, "pass", "docker info lists runtimes nvidia, runc"),
    ("the runtime not registered", "runtime", dict(INFO_26, Runtimes={"runc": {}}), "fail", "lists runtimes runc"),
    ("cdi asked of Docker 26", "cdi", INFO_26, "fail", "gpu_path = 'cdi' but this host has Docker 26"),
]


@pytest.mark.parametrize("setting,info,status,words", [d[1:] for d in DOCTOR], ids=[d[0] for d in DOCTOR])
def test_doctor_checks_what_the_engine_reports(setting, info, status, words):
    ctx = cdi_host(info=info, setting=setting)
    check = doctor.gpu_path_check(ctx)
    assert check.status == status and words in check.detail, check


def test_docker_run_argv_golden_cdi():
    ctx = gpu_host("auto", INFO_29, "1.20.0")
    doc = containers.resolved_spec(ctx, ctx.host.containers["dev"])
    check_golden(Path(__file__).resolve().parents[1] / "golden" / "docker_run" / "cdi.argv",
                 "".join(arg + "\n" for arg in containers.run_argv("dev", doc)).encode())


def test_apt_cache_madison_runs_beside_dockers_calls_not_before_them():
    in_order, jobs = facts.facts_table(facts.ProbeRequest())
    assert "toolkit_madison" not in [fact.name for fact in in_order]
    assert [fact.name for fact in jobs[0]] == ["docker_enabled", "toolkit_madison"]


@pytest.mark.parametrize("setting, on_a_host_without_nvidia, on_a_gpu_host", [
    ("never", "", ""),
    ("auto", "", "MADISON"),       # auto: only where nvidia-smi or the driver's device is there
    ("always", "MADISON", "MADISON"),
])
def test_apt_cache_madison_is_read_only_where_the_toolkit_may_be_installed(tmp_path, setting, on_a_host_without_nvidia,
                                                                          on_a_gpu_host):
    """Run the fact's real command with a stand-in apt-cache (and nvidia-smi) on PATH."""
    _, jobs = facts.facts_table(facts.ProbeRequest(toolkit=setting))
    command = next(fact.command for fact in jobs[0] if fact.name == "toolkit_madison")
    bare, gpu_host = tmp_path / "bare", tmp_path / "gpu"
    for folder in (bare, gpu_host):
        folder.mkdir()
        (folder / "apt-cache").write_text("#!/bin/sh\necho MADISON\n")
        (folder / "apt-cache").chmod(0o755)
    (gpu_host / "nvidia-smi").write_text("#!/bin/sh\n")
    (gpu_host / "nvidia-smi").chmod(0o755)
    for folder, expected in ((bare, on_a_host_without_nvidia), (gpu_host, on_a_gpu_host)):
        env = {"PATH": f"{folder}:/usr/bin:/bin"}
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env).stdout.strip()
        assert out == expected or (expected == "" and os.path.exists("/dev/nvidiactl")), (setting, folder.name, out)
