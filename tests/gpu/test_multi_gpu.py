"""Several GPUs on one real host (issue 21; prepared with issue 20, not yet run): disjoint lists, a count, a
clash refused, share_gpus, and a second run with 0 changed on the same UUIDs. Skipped where fewer than two
GPUs are visible. Run by `bash scripts/gpu-proof.sh run` on a multi-GPU host, after test_bootstrap_gpu.py."""
from __future__ import annotations

import json
import subprocess

import pytest

from gpufleet import gpu
from gpufleet.gpu_assign import GPU_RECORD
from tests.gpu.test_bootstrap_gpu import IMAGE, PROOF, WORK, fab, has_gpu, inventory, make_image, sh

CARDS = gpu.parse_query_gpu(sh("nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,compute_cap,"
                               "pci.bus_id --format=csv,noheader,nounits", check=False)) if has_gpu() else []

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(len(CARDS) < 2, reason=f"{len(CARDS)} GPU(s) visible: needs 2 or more"),
              pytest.mark.skipif(not (PROOF / "mirror").is_dir(), reason="no proof kit: bash scripts/gpu-proof.sh run")]


def containers(spec: dict[str, str]) -> str:
    """Containers by name -> the TOML lines after `gpus = ` (and any more keys)."""
    return "".join(f'\n[hosts.h200.containers.{name}]\nimage = "{IMAGE}"\nssh_port = {2230 + i}\ngpus = {value}\n'
                   for i, (name, value) in enumerate(spec.items()))


def write(name: str, extra: str):
    path = WORK / f"hosts-multi-{name}.toml"
    # the proof's dev container takes no GPU here, so the others are what is asked
    path.write_text(inventory(extra).read_text().replace('gpus = "all"', 'gpus = "none"', 1))
    return path


def device_ids(name: str) -> list[str]:
    host = json.loads(sh(f"docker inspect {name} --format '{{{{json .HostConfig}}}}'"))
    return [u for request in host["DeviceRequests"] or [] for u in request["DeviceIDs"] or []]


@pytest.fixture(scope="module")
def runs():
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        make_image()
    count = len(CARDS) - 1
    good = write("good", containers({"first": "[0]", "rest": str(count)}))
    return {"good": good, "count": count,
            "first": fab("-H", "h200", "bootstrap", inv=good), "second": fab("-H", "h200", "bootstrap", inv=good),
            "clash": fab("-H", "h200", "containers.up", inv=write("clash", containers(
                {"first": "[0]", "rest": str(count), "third": "[1]"}))),
            "shared": fab("-H", "h200", "containers.up", "--dry-run", inv=write("shared", containers(
                {"first": "[0]", "rest": str(count), "third": "[1]\nshare_gpus = true"})))}


def test_a_list_and_a_count_get_disjoint_gpus_by_uuid(runs):
    assert runs["first"].returncode == 0, runs["first"].stdout[-4000:]
    assert device_ids("first") == [CARDS[0].uuid]
    assert sorted(device_ids("rest")) == sorted(c.uuid for c in CARDS[1:])
    for name, cards in (("first", CARDS[:1]), ("rest", CARDS[1:])):
        listed = sh(f"docker exec {name} nvidia-smi -L")
        assert len(gpu.parse_smi_list(listed)) == len(cards) and all(c.uuid in listed for c in cards), listed


def test_a_second_run_changes_nothing_and_keeps_the_uuids(runs):
    second = runs["second"]
    assert second.returncode == 0 and second.host["changed"] == 0, second.stdout[-3000:]
    record = json.loads(sh(f"cat {GPU_RECORD}"))["containers"]
    assert record["first"]["uuids"] == [CARDS[0].uuid]
    assert sorted(record["rest"]["uuids"]) == sorted(c.uuid for c in CARDS[1:])


def test_a_clash_is_refused_and_share_gpus_allows_it(runs):
    assert runs["clash"].returncode == 1
    assert "containers rest and third would both hold GPU 1" in runs["clash"].host["error"]
    assert sh("docker ps -a --filter name=^third$ --format '{{.Names}}'") == ""
    assert runs["shared"].returncode == 0, runs["shared"].host
    planned = " ".join(step["message"] for step in runs["shared"].host["steps"])
    assert f"run container third (on GPU 1 {CARDS[1].name} {CARDS[1].uuid}" in planned
