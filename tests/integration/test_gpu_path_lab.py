"""gpu3 (Debian 13, systemd, docker-ce 26, the toolkit 1.18 from the lab's mirror, no GPU): the toolkit's
packages at one version, the dev container's real open-files limit (`ulimit_nofile`) set, changed and kept,
and NVIDIA's nvidia-cdi-refresh units (the toolkit 1.20's own files; the lab's 1.18 packages do not ship
them) as the plan reads them from systemd, before and after the commands it runs."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from gpufleet import gpu
from lab.common import tar_bytes
from tasks import nvidia
from tests.integration.helpers import inventory_variant, sh

HOST = "gpu3"
LAB_LIMIT = '"20000:20000"'
UNITS = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "toolkit"
SHOW = "systemctl show --property=Id,LoadState,UnitFileState,ActiveState " + " ".join(gpu.CDI_REFRESH_UNITS)


def limits(lab) -> str:
    """The open-files limits (soft hard) of a process in the dev container, read inside it."""
    code, out = sh(lab, HOST, "docker exec dev sh -c 'echo $(ulimit -Sn) $(ulimit -Hn)'")
    assert code == 0, out
    return out


def steps(result) -> dict[str, dict]:
    return {s["step"]: s for s in result.hosts[HOST]["steps"]}


@pytest.fixture(scope="module")
def on_gpu3(lab, fab, tmp_path_factory):
    """A bare gpu3 bootstrapped twice with the dev container at 4096:20000 open files, then twice at 8192:20000."""
    if not lab.package_mirror.nvidia:
        pytest.skip("no NVIDIA repo in the lab mirror: ../shared/gpu-stack is absent")
    lab.recreate_server(HOST)
    tmp = tmp_path_factory.mktemp("gpu-path")
    first = inventory_variant(lab, tmp, "first.toml", replace={f"ulimit_nofile = {LAB_LIMIT}": 'ulimit_nofile = "4096:20000"'})
    second = inventory_variant(lab, tmp, "second.toml", replace={f"ulimit_nofile = {LAB_LIMIT}": "ulimit_nofile = \"8192:20000\""})
    runs = {"bootstrap": fab("-H", HOST, "bootstrap", inventory=first)}
    runs["limit 4096"] = limits(lab)
    runs["bootstrap again"] = fab("-H", HOST, "bootstrap", inventory=first)
    runs["up 8192"] = fab("-H", HOST, "containers.up", inventory=second)
    runs["limit 8192"] = limits(lab)
    runs["up 8192 again"] = fab("-H", HOST, "containers.up", inventory=second)
    return runs


def test_the_toolkit_packages_are_installed_at_one_version_and_the_plan_said_which(lab, on_gpu3):
    first = on_gpu3["bootstrap"]
    assert first.returncode == 0, first.stdout[-3000:]
    toolkit_step = steps(first)["nvidia.toolkit"]
    # the lab keeps gpu3 on 1.18 with the inventory's own pin (the mirror holds 1.20 beside it)
    assert "at one version: the version nvidia_toolkit_version = '1.18.0' names" in toolkit_step["message"], toolkit_step
    code, out = sh(lab, HOST, "dpkg-query -W -f '${Package} ${Version}\\n' nvidia-container-toolkit "
                              "nvidia-container-toolkit-base")
    assert code == 0 and out.splitlines() == ["nvidia-container-toolkit 1.18.0-1",
                                              "nvidia-container-toolkit-base 1.18.0-1"], out
    assert steps(on_gpu3["bootstrap again"])["nvidia.toolkit"]["message"].startswith(
        "nvidia-container-toolkit 1.18.0-1 installed")
    # no GPU here: no CDI spec to keep, and the container has no GPU path in its spec
    assert steps(first)["nvidia.cdi"]["message"] == "no working NVIDIA GPU: no CDI spec to make"


def test_the_containers_open_files_limit_is_set_then_changed_and_kept(lab, on_gpu3):
    again = on_gpu3["bootstrap again"]
    assert again.returncode == 0 and again.hosts[HOST]["changed"] == 0, again.stdout[-3000:]
    assert on_gpu3["limit 4096"] == "4096 20000"
    changed, kept = on_gpu3["up 8192"], on_gpu3["up 8192 again"]
    # re-created from its image: the stages inside it run again too
    run = steps(changed)["containers.run"]
    assert changed.returncode == 0 and run["status"] == "changed", changed.stdout[-3000:]
    assert "re-create container dev (ulimit_nofile: '4096:20000' -> '8192:20000')" in run["message"], run
    assert on_gpu3["limit 8192"] == "8192 20000"
    assert kept.returncode == 0 and kept.hosts[HOST]["changed"] == 0, kept.stdout[-3000:]
    code, out = sh(lab, HOST, "docker inspect --format '{{json .HostConfig.Ulimits}}' dev")
    assert code == 0 and json.loads(out) == [{"Name": "nofile", "Soft": 8192, "Hard": 20000}], out


def test_the_cdi_refresh_units_as_systemd_reports_them_before_and_after_enabling(lab, on_gpu3):
    code, none = sh(lab, HOST, SHOW)
    assert code == 0, none
    assert gpu.refresh_units(True, gpu.parse_unit_states(none)) == (False, False), none  # the lab's 1.18: none
    # as nvidia-container-toolkit-base 1.18+ installs them
    units = {f"usr/lib/systemd/system/{name}": ((UNITS / name).read_bytes(), 0o644, 0) for name in gpu.CDI_REFRESH_UNITS}
    assert lab.client.containers.get(lab.container_name(HOST)).put_archive("/", tar_bytes(units))
    code, out = sh(lab, HOST, "systemctl daemon-reload")
    assert code == 0, out
    code, before = sh(lab, HOST, SHOW)
    assert gpu.refresh_units(True, gpu.parse_unit_states(before)) == (True, True), before
    for argv in nvidia.ENABLE_UNITS:
        code, out = sh(lab, HOST, shlex.join(argv))
        assert code == 0, out
    code, after = sh(lab, HOST, SHOW)
    assert gpu.refresh_units(True, gpu.parse_unit_states(after)) == (True, False), after
    assert sh(lab, HOST, "systemctl is-enabled nvidia-cdi-refresh.path nvidia-cdi-refresh.service; "
                         "systemctl is-active nvidia-cdi-refresh.path")[1].split() == ["enabled", "enabled", "active"]
    print("systemctl show, without the units:\n" + none + "\nbefore:\n" + before + "\nafter:\n" + after)
