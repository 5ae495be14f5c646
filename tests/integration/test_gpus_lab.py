"""GPU bookkeeping (issue 20 items 1-3, 7) on the lab through the real CLI.

The lab has no GPU, so gpu5 (a server of its own, so that no other test meets its stand-ins) gets the one stand-in that cannot be real: an `nvidia-smi` printing the derived
8x H200 captures (tests/fixtures/gpu/derived-8x-h200), and the NVIDIA hook Docker looks for to honour
`--gpus` (a script that accepts the container and does nothing; a runtime named nvidia that is runc). Docker
itself is real: it parses the `--gpus "device=..."` the tool passes and hands the UUIDs to the container
(NVIDIA_VISIBLE_DEVICES), which is read back. The server's GPU record, the plan's refusals (nothing changed
after them), a second run with 0 changed, and ops.gpus --json mapping real host PIDs of the containers'
processes are all checked on the server.
"""
import json
import shlex
from pathlib import Path

import pytest

from gpufleet import gpu
from gpufleet.gpu_assign import GPU_RECORD
from gpufleet.gpu_view import IDLE_RECORD
from tests.integration.helpers import inventory_variant, sh

EIGHT = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "derived-8x-h200"
U = [g.uuid for g in gpu.parse_query_gpu((EIGHT / "query-gpu.csv").read_text())]
FAKE_DIR = "/opt/gpufleet-fake-gpu"
HOOK = "#!/bin/sh\n# stand-in for the NVIDIA hook (no GPU in the lab): accepts the container, changes nothing\ncat >/dev/null\n"


def put(lab, host: str, path: str, text: str, mode: str = "0644") -> None:
    code, out = sh(lab, host, f"mkdir -p {shlex.quote(str(Path(path).parent))} && printf %s {shlex.quote(text)} "
                              f"> {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}")
    assert code == 0, out


def variant(lab, tmp_path, name: str, containers: str) -> Path:
    return inventory_variant(lab, tmp_path, name, replace={
        "[hosts.gpu5]\n": '[hosts.gpu5]\nnvidia_toolkit = "never"\n'
                          'daemon_json = { runtimes = { nvidia = { path = "runc" } } }\n'}, append=containers)


def containers(train: str, extra: str = "", arch_ok: bool = True) -> str:
    # the lab's image says it is built for CUDA 11.6 (as the recipe's pytorch image is), too old for an H200
    allow = "allow_arch_mismatch = true\n" if arch_ok else ""
    return (f"\n[hosts.gpu5.containers.dev]\ngpus = [0, 1]\n{allow}"
            f"\n[hosts.gpu5.containers.train]\nimage = \"{{image}}\"\nssh_port = 2223\ngpus = {train}\n{allow}{extra}")


@pytest.fixture(scope="module")
def gpu_server(lab, fab):
    """gpu5 (a server of its own, like gpu1: Debian 12, systemd, docker-ce 20.10; the session lab's servers
    are left as they are) bootstrapped without a GPU; then the stand-in nvidia-smi and hook put on it; the
    lab back to its servers afterwards."""
    servers = len(lab.server_names)
    lab.up(hosts=5)
    lab.recreate_server("gpu5")
    first = fab("-H", "gpu5", "bootstrap")
    assert first.returncode == 0, first.stdout[-3000:]
    for name in ("query-gpu.csv", "status.csv", "compute-apps.csv", "list-L.txt", "smi-head5.txt"):
        put(lab, "gpu5", f"{FAKE_DIR}/{name}", (EIGHT / name).read_text())
    put(lab, "gpu5", "/usr/local/bin/nvidia-smi", (EIGHT / "nvidia-smi.sh").read_text(), "0755")
    put(lab, "gpu5", "/usr/local/bin/nvidia-container-runtime-hook", HOOK, "0755")
    yield lab
    lab.up(hosts=servers)


def image_of(lab) -> str:
    from gpufleet import inventory
    return inventory.load(lab.inventory_path).host("gpu5").containers["dev"].image


def test_gpus_by_index_and_count_reach_docker_by_uuid_are_recorded_and_stay(gpu_server, fab, tmp_path, monkeypatch):
    lab = gpu_server
    good = variant(lab, tmp_path, "good.toml", containers("2").replace("{image}", image_of(lab)))
    dry = fab("-H", "gpu5", "bootstrap", "--dry-run", inventory=good)
    assert dry.returncode == 0, dry.stdout[-3000:]
    planned = " ".join(s["message"] for s in dry.hosts["gpu5"]["steps"])
    assert f"GPU 0 NVIDIA H200 {U[0]}, GPU 1 NVIDIA H200 {U[1]}" in planned
    assert f"run container train (on GPU 2 NVIDIA H200 {U[2]}, GPU 3 NVIDIA H200 {U[3]}" in planned

    run = fab("-H", "gpu5", "bootstrap", inventory=good)
    assert run.returncode == 0, [s for s in run.hosts["gpu5"]["steps"] if s["status"] != "ok"] or run.stdout[-3000:]
    done = " ".join(s["message"] for s in run.hosts["gpu5"]["steps"])
    # a GPU change re-creates the container like any spec change, with the snapshot rules
    # (the GPU path comes into its spec with its first GPU: gpu_path: None -> 'runtime' is named beside)
    assert "re-create container dev (" in done and f"gpus: 'none' -> {U[:2]!r}" in done and "so no snapshot" in done, done
    for name, uuids in (("dev", U[:2]), ("train", U[2:4])):
        # what Docker made of the argv: the device request and the UUIDs the container is given
        code, requests = sh(lab, "gpu5", f"docker inspect -f '{{{{json .HostConfig.DeviceRequests}}}}' {name}")
        assert code == 0 and json.loads(requests)[0]["DeviceIDs"] == uuids, requests
        # Docker puts them in the environment of the container's first process (docker exec has its own)
        code, environ = sh(lab, "gpu5", f"docker exec {name} cat /proc/1/environ")
        assert code == 0 and f"NVIDIA_VISIBLE_DEVICES={','.join(uuids)}" in environ.split("\0"), environ
    code, text = sh(lab, "gpu5", f"cat {GPU_RECORD}")
    record = json.loads(text)["containers"]
    assert {n: (r["asked"], r["uuids"]) for n, r in record.items()} == {"dev": ([0, 1], U[:2]), "train": (2, U[2:4])}

    again = fab("-H", "gpu5", "bootstrap", inventory=good)
    assert again.returncode == 0 and again.hosts["gpu5"]["changed"] == 0, [
        s for s in again.hosts["gpu5"]["steps"] if s["status"] != "ok"]
    assert json.loads(sh(lab, "gpu5", f"cat {GPU_RECORD}")[1])["containers"] == record  # since kept too

    shown = fab("show-host", "gpu5", "--gpus", inventory=good)
    assert shown.returncode == 0 and "on the server" in shown.stdout, shown.stderr[-2000:]
    monkeypatch.chdir(tmp_path)  # its command log goes under ./.gpufleet
    from gpufleet import inventory
    from tasks.hosts import server_gpus
    assert dict(server_gpus(inventory.load(good), "gpu5")) == {
        "dev": f"GPU 0 NVIDIA H200 {U[0]}, GPU 1 NVIDIA H200 {U[1]}",
        "train": f"GPU 2 NVIDIA H200 {U[2]}, GPU 3 NVIDIA H200 {U[3]}"}


@pytest.mark.parametrize("train,refusal", [
    # checked for the container the plan would make anew (train onto GPUs 4 and 5), not for dev, which runs
    # as specified
    ("[4, 5]\n#arch", "container train: image {image} is built for CUDA 11.6, which has no kernels for GPU 4 (NVIDIA "
                      "H200, compute capability 9.0, Hopper sm_90 needs CUDA >= 11.8): use "
                      "pytorch/pytorch:2.1.0-cuda11.8-cudnn8-runtime, or set allow_arch_mismatch = true"),
    ("[1]", f"containers dev and train would both hold GPU 1 NVIDIA H200 {U[1]}: give them different GPUs, or set "
            "share_gpus = true on one of them or on the host"),
    ("[8]", f"container train: gpus = [8] names GPU 8, which this server does not have (it has GPU 0 NVIDIA H200 {U[0]}"),
    ("7", "container train: gpus = 7 but only 6 GPU(s) are free on this server (it has GPU 0 NVIDIA H200"),
])
def test_the_plan_refuses_and_nothing_changes(gpu_server, fab, tmp_path, train, refusal):
    lab = gpu_server
    before = sh(lab, "gpu5", f"docker inspect -f '{{{{.Id}}}}' dev train; cat {GPU_RECORD}")
    bad = variant(lab, tmp_path, "bad.toml",
                  containers(train, arch_ok="#arch" not in train).replace("{image}", image_of(lab)))
    refused = fab("-H", "gpu5", "containers.up", inventory=bad)
    assert refused.returncode == 1
    assert refusal.replace("{image}", image_of(lab)) in refused.hosts["gpu5"]["error"], refused.hosts["gpu5"]
    assert sh(lab, "gpu5", f"docker inspect -f '{{{{.Id}}}}' dev train; cat {GPU_RECORD}") == before


def test_share_gpus_lets_two_containers_hold_one_gpu(gpu_server, fab, tmp_path):
    lab = gpu_server
    shared = variant(lab, tmp_path, "shared.toml",
                     containers("[1]", "share_gpus = true\n").replace("{image}", image_of(lab)))
    dry = fab("-H", "gpu5", "containers.up", "--dry-run", inventory=shared)
    assert dry.returncode == 0, dry.hosts["gpu5"]
    planned = " ".join(s["message"] for s in dry.hosts["gpu5"]["steps"])
    assert f"re-create container train (gpus: {U[2:4]!r} -> {[U[1]]!r}; on GPU 1 NVIDIA H200 {U[1]})" in planned


def test_ops_gpus_json_maps_real_host_pids_to_their_containers(gpu_server, fab, tmp_path):
    lab = gpu_server
    good = variant(lab, tmp_path, "good.toml", containers("2").replace("{image}", image_of(lab)))
    pids = {}
    for name in ("dev", "train"):
        code, out = sh(lab, "gpu5", f"docker top {name} -eo pid")
        pids[name] = int(out.splitlines()[1])
    # train's process on GPU 2 (it holds it), dev's on GPU 5 (it does not): pids the server really has
    put(lab, "gpu5", f"{FAKE_DIR}/compute-apps.csv",
        f"{U[2]}, {pids['train']}, python3, 1634\n{U[5]}, {pids['dev']}, python3, 800\n")
    view = fab("-H", "gpu5", "ops.gpus", inventory=good)
    assert view.returncode == 0, view.stdout[-3000:]
    rows = {row["index"]: row for row in view.hosts["gpu5"]["data"]}
    assert len(rows) == 8 and rows[0]["containers"] == ["dev"] and rows[3]["containers"] == ["train"]
    assert rows[2]["processes"] == [{"pid": pids["train"], "name": "python3", "used_mib": 1634, "container": "train"}]
    assert rows[5]["flags"] == [f"pid {pids['dev']} of dev runs on a GPU dev does not hold"]
    assert rows[2]["idle_seconds"] is None and rows[7]["idle_seconds"] is not None
    idle = json.loads(sh(lab, "gpu5", f"cat {IDLE_RECORD}")[1])
    assert sorted(idle) == sorted(U[i] for i in (0, 1, 3, 4, 6, 7))  # the server keeps when each went idle
    assert "GPU" in view.stdout and "pid" in view.stdout
