"""GPUs per container on a real NVIDIA host (issue 20's GPU-host proof): a container given GPU 0 by its UUID
and one with gpus = "none"; a clash refused; ops.gpus showing a torch process in the first container mapped
to it by host PID; the arch check passing for the host's card and refusing an image too old for it without
pulling it; doctor's real CUDA kernel.

Run by `bash scripts/gpu-proof.sh run` on the GPU host after test_bootstrap_gpu.py (same kit, same inventory
shape, same image); skipped elsewhere. Every check reads the host's real state (docker inspect, nvidia-smi).
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from gpufleet import gpu
from gpufleet.gpu_assign import GPU_RECORD
from tests.gpu.test_bootstrap_gpu import GPU_PATH, IMAGE, MIRROR, NOFILE, WORK, fab, has_gpu, inventory, make_image, note, sh

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not has_gpu(), reason="no NVIDIA GPU here"),
              pytest.mark.skipif(not MIRROR.is_dir(), reason="no proof kit: bash scripts/gpu-proof.sh run")]

CARDS = gpu.parse_query_gpu(sh("nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,compute_cap,"
                               "pci.bus_id --format=csv,noheader,nounits", check=False)) if has_gpu() else []
# the proof's image under a tag that names a CUDA new enough for every card in gpu.ARCH_MIN_CUDA, and one
# that names a CUDA too old for the host's card (never pulled: refused before)
NEW_TAG = "gpufleet-proof/torch:local-cuda12.9"
OLD_TAG = "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime"
HOLD = ("import torch, time; x = torch.ones(1 << 26, device='cuda'); torch.cuda.synchronize(); "
        "open('/tmp/holding', 'w').close(); time.sleep(120)")


def shared_inventory(extra: str = ""):
    """The proof's inventory with dev on GPU 0 by UUID, and a container with no GPU."""
    path = inventory(f'\n[hosts.h200.containers.cpu]\nimage = "{NEW_TAG}"\nssh_port = 2224\ngpus = "none"\nulimit_nofile = {NOFILE}\n{extra}')
    path.write_text(path.read_text().replace('gpus = "all"', f'gpus = ["{CARDS[0].uuid}"]', 1).replace(
        f'image = "{IMAGE}"', f'image = "{NEW_TAG}"', 1))
    return path


@pytest.fixture(scope="module")
def runs():
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        make_image()
    sh(f"docker tag {IMAGE} {NEW_TAG}")
    text = shared_inventory().read_text()
    inv = _with(text, "")
    out = {"first": fab("-H", "h200", "bootstrap", inv=inv), "second": fab("-H", "h200", "bootstrap", inv=inv)}
    out["clash"] = fab("-H", "h200", "containers.up", inv=_with(text, (
        f'\n[hosts.h200.containers.clash]\nimage = "{NEW_TAG}"\nssh_port = 2225\ngpus = [0]\n')))
    out["old_image"] = fab("-H", "h200", "containers.up", inv=_with(text, (
        f'\n[hosts.h200.containers.old]\nimage = "{OLD_TAG}"\nssh_port = 2226\ngpus = [0]\nshare_gpus = true\n')))
    out["inv"] = inv
    return out


def _with(text: str, extra: str):
    path = WORK / f"hosts-gpus-{len(list(WORK.glob('hosts-gpus-*.toml')))}.toml"
    path.write_text(text + extra)
    return path


def test_gpu_0_by_uuid_and_a_container_without_gpus(runs):
    first = runs["first"]
    assert first.returncode == 0, first.stdout[-4000:]
    dev = json.loads(sh("docker inspect dev --format '{{json .HostConfig}}'"))
    if GPU_PATH == "runtime":
        assert dev["Runtime"] == "nvidia" and dev["DeviceRequests"][0]["DeviceIDs"] == [CARDS[0].uuid], dev["DeviceRequests"]
    else:  # one CDI device per UUID
        assert [(r["Driver"], r["DeviceIDs"]) for r in dev["DeviceRequests"]] == [("cdi", [f"nvidia.com/gpu={CARDS[0].uuid}"])]
    listed = sh("docker exec dev nvidia-smi -L")
    assert CARDS[0].uuid in listed and len(gpu.parse_smi_list(listed)) == 1, listed
    cpu = json.loads(sh("docker inspect cpu --format '{{json .HostConfig}}'"))
    assert not cpu["DeviceRequests"] and cpu["Runtime"] != "nvidia"
    record = json.loads(sh(f"cat {GPU_RECORD}"))["containers"]
    assert record["dev"]["uuids"] == [CARDS[0].uuid] and "cpu" not in record
    note(f"\n```\n$ docker exec dev nvidia-smi -L\n{listed}\n$ cat {GPU_RECORD}\n{json.dumps(record, indent=1)}\n```")


def test_a_second_run_changes_nothing(runs):
    assert runs["second"].returncode == 0 and runs["second"].host["changed"] == 0, runs["second"].stdout[-3000:]


def test_a_clash_is_refused_before_anything_is_created(runs):
    refused = runs["clash"]
    assert refused.returncode == 1
    assert f"containers clash and dev would both hold GPU 0 {CARDS[0].name} {CARDS[0].uuid}" in refused.host["error"]
    assert sh("docker ps -a --filter name=^clash$ --format '{{.Names}}'") == ""


def test_the_arch_check_passes_for_the_card_and_refuses_an_image_too_old_without_pulling_it(runs):
    needs = gpu.min_cuda_for(CARDS[0].compute_cap)
    assert needs, f"compute capability {CARDS[0].compute_cap} is not in gpu.ARCH_MIN_CUDA"
    assert runs["first"].returncode == 0  # dev's image names CUDA 12.9: fine for this card
    refused = runs["old_image"]
    assert refused.returncode == 1
    assert (f"image {OLD_TAG} is built for CUDA 11.6, which has no kernels for GPU 0 ({CARDS[0].name}, compute "
            f"capability {CARDS[0].compute_cap}, {needs[0]} needs CUDA >= {needs[1]}): use ") in refused.host["error"]
    assert subprocess.run(["docker", "image", "inspect", OLD_TAG], capture_output=True).returncode != 0  # not pulled


def test_ops_gpus_maps_a_torch_process_in_dev_to_dev(runs):
    sh(f"docker exec -d dev python3 -c \"{HOLD}\"")
    deadline = time.monotonic() + 90
    while sh("docker exec dev sh -c 'test -e /tmp/holding && echo yes'", check=False) != "yes":
        assert time.monotonic() < deadline, "the torch process did not start"
        time.sleep(1)
    view = fab("-H", "h200", "ops.gpus", inv=runs["inv"])
    assert view.returncode == 0, view.stdout[-3000:]
    row = next(r for r in view.host["data"] if r["uuid"] == CARDS[0].uuid)
    assert row["containers"] == ["dev"] and row["idle_seconds"] is None
    mine = [p for p in row["processes"] if p["container"] == "dev"]
    assert mine and mine[0]["name"].endswith("python3") and not row["flags"], row


def test_doctor_runs_a_real_kernel_in_the_gpu_container(runs):
    doctor = fab("-H", "h200", "doctor", inv=runs["inv"])
    rows = {row[1]: row for row in doctor.host["data"]}
    assert rows["dev: cuda kernel"][2] == "pass" and CARDS[0].name in rows["dev: cuda kernel"][3], rows
    assert rows["cpu: gpu"][2] == "skipped"
