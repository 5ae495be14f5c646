"""gpu_assign: which GPUs each container gets, from the (derived) nvidia-smi output of an 8x H200 server and
the server's record; tables of what the inventory asks and what it resolves to, or the refusal."""
import json
from pathlib import Path

import pytest

from gpufleet import gpu, gpu_assign
from gpufleet.errors import FleetError
from gpufleet.gpu_assign import GpuAssignmentError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
EIGHT = FIXTURES / "derived-8x-h200"  # derived from the real one-H200 captures: see its README.md

GPUS = gpu.parse_query_gpu((EIGHT / "query-gpu.csv").read_text())
DEVICES = gpu_assign.devices(GPUS, gpu.parse_mig_devices((EIGHT / "list-L.txt").read_text()))
U = [g.uuid for g in GPUS]  # U[i]: GPU i's UUID


def test_the_derived_server_has_eight_h200s_by_uuid():
    assert [(g.index, g.name, g.compute_cap) for g in GPUS] == [(i, "NVIDIA H200", "9.0") for i in range(8)]
    assert len(set(U)) == 8 and all(u.startswith("GPU-") for u in U)
    assert DEVICES == [gpu_assign.Device(U[i], i, "NVIDIA H200") for i in range(8)]


RESOLVED = [
    # (id, asked {container: gpus}, record, shared, expected {container: UUIDs})
    ("indices", {"a": [0, 1], "b": [2]}, {}, set(), {"a": [U[0], U[1]], "b": [U[2]]}),
    ("uuids", {"a": [U[5], U[3]]}, {}, set(), {"a": sorted([U[3], U[5]])}),
    ("indices and uuids mixed", {"a": [0, U[7]]}, {}, set(), {"a": [U[0], U[7]]}),
    ("a count takes the first free", {"a": [0, 1], "b": 2}, {}, set(), {"a": [U[0], U[1]], "b": [U[2], U[3]]}),
    ("two counts do not overlap", {"a": 3, "b": 3}, {}, set(), {"a": U[0:3], "b": U[3:6]}),
    ("a count stays on its recorded GPUs",
     {"a": 2, "b": 2}, {"b": {"asked": 2, "uuids": [U[6], U[7]], "since": 1}}, set(),
     {"a": [U[0], U[1]], "b": [U[6], U[7]]}),
    ("a grown count keeps its GPUs and adds free ones",
     {"b": 3}, {"b": {"asked": 2, "uuids": [U[6], U[7]], "since": 1}}, set(), {"b": [U[0], U[6], U[7]]}),
    ("a recorded GPU now named by a list goes to the list",
     {"a": [7], "b": 2}, {"b": {"asked": 2, "uuids": [U[6], U[7]], "since": 1}}, set(),
     {"a": [U[7]], "b": [U[0], U[6]]}),
    ("all", {"a": "all"}, {}, set(), {"a": U}),
    ("two all share as before", {"a": "all", "b": "all"}, {}, set(), {"a": U, "b": U}),
    ("share_gpus lets two lists overlap", {"a": [0, 1], "b": [1]}, {}, {"b"}, {"a": [U[0], U[1]], "b": [U[1]]}),
    ("share_gpus with all", {"a": "all", "b": [3]}, {}, {"a"}, {"a": U, "b": [U[3]]}),
]


@pytest.mark.parametrize("asked,record,shared,expected", [r[1:] for r in RESOLVED], ids=[r[0] for r in RESOLVED])
def test_resolution(asked, record, shared, expected):
    assert gpu_assign.resolve(asked, DEVICES, record, shared=shared) == expected


REFUSED = [
    # (id, asked, record, held elsewhere, the refusal)
    ("two lists clash", {"a": [0, 1], "b": [1, 2]}, {}, {},
     f"containers a and b would both hold GPU 1 NVIDIA H200 {U[1]}: give them different GPUs, or set "
     "share_gpus = true on one of them or on the host"),
    ("a uuid and an index of the same GPU", {"a": [U[4]], "b": [4]}, {}, {}, "containers a and b would both hold GPU 4"),
    ("a list against all", {"a": "all", "b": [3]}, {}, {}, "containers a and b would both hold GPU 3"),
    ("an index the server has not", {"a": [0, 8]}, {}, {},
     f"container a: gpus = [0, 8] names GPU 8, which this server does not have (it has GPU 0 NVIDIA H200 {U[0]}; "),
    ("a uuid the server has not", {"a": ["GPU-00000000-0000-0000-0000-000000000000"]}, {}, {},
     "names GPU-00000000-0000-0000-0000-000000000000, which this server does not have (it has GPU 0 NVIDIA H200"),
    ("a count larger than the server", {"a": 9}, {}, {},
     f"container a: gpus = 9 but only 8 GPU(s) are free on this server (it has GPU 0 NVIDIA H200 {U[0]}; "),
    ("a count larger than what is free", {"a": [0, 1, 2, 3, 4], "b": 4}, {}, {},
     "container b: gpus = 4 but only 3 GPU(s) are free on this server (it has GPU 0"),
    ("a container not in the inventory still holds its GPUs", {"a": 7}, {}, {"old": U[:2]},
     "container a: gpus = 7 but only 6 GPU(s) are free on this server"),
    ("a listed GPU that failed is not replaced behind the user's back",
     {"a": [0]}, {"a": {"asked": [0], "uuids": ["GPU-ffffffff-dead-dead-dead-ffffffffffff"], "since": 1}}, {},
     "container a: gpus = [0] held GPU-ffffffff-dead-dead-dead-ffffffffffff, which this server no longer has"),
]


@pytest.mark.parametrize("asked,record,elsewhere,message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refusal(asked, record, elsewhere, message):
    with pytest.raises(GpuAssignmentError) as refused:
        gpu_assign.resolve(asked, DEVICES, record, held_elsewhere=elsewhere)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_host_share_gpus_lets_every_container_overlap():
    assert gpu_assign.resolve({"a": [0, 1], "b": [1, 2]}, DEVICES, {}, host_shared=True) == {
        "a": [U[0], U[1]], "b": [U[1], U[2]]}


def test_renumbered_gpus_after_a_reboot_keep_the_uuids_an_index_list_was_given():
    """GPUs 0 and 1 swap indices (a reboot, a re-seated card): the container stays on the GPU it had."""
    before = gpu_assign.resolve({"a": [0], "b": [1]}, DEVICES, {})
    record = gpu_assign.new_record({}, before, {"a": [0], "b": [1]}, now=100)
    swapped = [gpu.Gpu(1 if g.index == 0 else 0 if g.index == 1 else g.index, g.name, g.uuid) for g in GPUS]
    after = gpu_assign.resolve({"a": [0], "b": [1]}, gpu_assign.devices(swapped), record)
    assert after == before == {"a": [U[0]], "b": [U[1]]}
    # without the record the indices would move them: that is what the record is for
    assert gpu_assign.resolve({"a": [0], "b": [1]}, gpu_assign.devices(swapped), {}) == {"a": [U[1]], "b": [U[0]]}


def test_a_changed_list_is_looked_up_again():
    record = {"a": {"asked": [0], "uuids": [U[0]], "since": 1}}
    assert gpu_assign.resolve({"a": [1]}, DEVICES, record) == {"a": [U[1]]}


# --- MIG instances (nvidia-smi -L of an A100 with two MIG instances on GPU 0) ---

MIG_TEXT = (FIXTURES / "list-L-mig.txt").read_text()
MIGS = gpu.parse_mig_devices(MIG_TEXT)
A100 = [gpu.Gpu(i, "NVIDIA A100-SXM4-40GB", line.split("UUID: ")[1].rstrip(")"))
        for i, line in enumerate(gpu.parse_smi_list(MIG_TEXT))]
MIG_DEVICES = gpu_assign.devices(A100, MIGS)


def test_mig_devices_from_nvidia_smi_l():
    assert MIGS == [gpu.MigDevice("MIG-2e3f4a5b-6c7d-5e8f-9a0b-1c2d3e4f5a6b", 0, "3g.20gb"),
                    gpu.MigDevice("MIG-3f4a5b6c-7d8e-5f9a-0b1c-2d3e4f5a6b7c", 0, "3g.20gb")]
    assert gpu.parse_mig_devices((EIGHT / "list-L.txt").read_text()) == []


def test_two_mig_instances_of_one_gpu_go_to_two_containers():
    assert gpu_assign.resolve({"a": [MIGS[0].uuid], "b": [MIGS[1].uuid]}, MIG_DEVICES, {}) == {
        "a": [MIGS[0].uuid], "b": [MIGS[1].uuid]}


def test_a_mig_instance_clashes_with_its_whole_gpu_and_a_count_skips_a_split_gpu():
    with pytest.raises(GpuAssignmentError, match="containers a and b would both hold"):
        gpu_assign.resolve({"a": [MIGS[0].uuid], "b": [0]}, MIG_DEVICES, {})
    assert gpu_assign.resolve({"a": [MIGS[0].uuid], "b": 1}, MIG_DEVICES, {}) == {
        "a": [MIGS[0].uuid], "b": [A100[1].uuid]}


# --- the record on the server ---

def test_the_record_keeps_since_while_the_gpus_stay_and_renders_stably():
    first = gpu_assign.new_record({}, {"a": [U[0]], "b": [U[1], U[2]]}, {"a": [0], "b": 2}, now=100)
    again = gpu_assign.new_record(first, {"a": [U[0]], "b": [U[1], U[3]]}, {"a": [0], "b": 2}, now=200)
    assert again == {"a": {"asked": [0], "uuids": [U[0]], "since": 100},
                     "b": {"asked": 2, "uuids": [U[1], U[3]], "since": 200}}
    text = gpu_assign.render_record(again)
    assert gpu_assign.parse_record(text.decode()) == again
    assert gpu_assign.render_record(json.loads(text)["containers"]) == text


def test_the_record_keeps_a_container_the_server_still_has_and_drops_the_others():
    old = {"gone": {"asked": 1, "uuids": [U[5]], "since": 1}, "orphan": {"asked": 1, "uuids": [U[6]], "since": 1}}
    assert gpu_assign.new_record(old, {}, {}, now=5, keep={"orphan"}) == {"orphan": old["orphan"]}


@pytest.mark.parametrize("text", ["not json", '{"containers": []}', '{"containers": {"a": {"uuids": 3}}}', "[]"])
def test_a_damaged_record_is_refused_not_overwritten(text):
    with pytest.raises(FleetError, match=r"^/var/lib/gpufleet/gpus.json: .*; move it aside and run again$"):
        gpu_assign.parse_record(text)


def test_no_record_is_an_empty_one():
    assert gpu_assign.parse_record("") == {}


# --- what the inventory accepts for gpus ---

GPUS_KEY = [
    ('"auto"', "auto"), ('"none"', "none"), ("2", 2), ("[0, 1]", (0, 1)),
    (f'["{U[3]}", 5]', (U[3], 5)), ('["MIG-2e3f4a5b-6c7d-5e8f-9a0b-1c2d3e4f5a6b"]', ("MIG-2e3f4a5b-6c7d-5e8f-9a0b-1c2d3e4f5a6b",)),
    ("0", "hosts.h.containers.c.gpus: 0 is not a GPU count"),
    ("[]", "hosts.h.containers.c.gpus: expected \"auto\", \"all\", \"none\", a count or a list"),
    ("[0, 0]", "hosts.h.containers.c.gpus: [0, 0] names a GPU twice"),
    ("[-1]", "hosts.h.containers.c.gpus: -1 is not a GPU index"),
    ('["gpu0"]', "hosts.h.containers.c.gpus: 'gpu0' is not a GPU index (0, 1, ...) or a GPU/MIG UUID"),
    ("true", "hosts.h.containers.c.gpus: expected \"auto\", \"all\", \"none\", a count or a list of GPU indices or "
             "UUIDs, got a boolean"),
    ('"some"', "hosts.h.containers.c.gpus: 'some' is not one of auto, all, none"),
]


@pytest.mark.parametrize("value,expected", GPUS_KEY, ids=[v for v, _ in GPUS_KEY])
def test_the_gpus_key(value, expected):
    from gpufleet import inventory
    text = f'[hosts.h]\naddress = "10.0.0.1"\n[hosts.h.containers.c]\nimage = "img"\nssh_port = 2222\ngpus = {value}\n'
    if isinstance(expected, str) and expected.startswith("hosts."):
        with pytest.raises(FleetError) as bad:
            inventory.loads(text, "hosts.toml")
        assert expected in str(bad.value) and "hosts.toml" in str(bad.value) and "\n" not in str(bad.value)
    else:
        assert inventory.loads(text).host("h").containers["c"].gpus == expected


# --- arch: which CUDA has kernels for which GPU ---

ARCH = [
    # (image, image CUDA, compute capability, refused?, the tag offered)
    ("pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime", "11.6", "9.0", "pytorch/pytorch:2.1.0-cuda11.8-cudnn8-runtime"),
    ("pytorch/pytorch:2.1.0-cuda11.8-cudnn8-runtime", "11.8", "9.0", ""),
    ("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", "12.4", "10.0", "pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime"),
    ("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", "12.4", "12.0", "pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime"),
    ("pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime", "12.8", "12.0", ""),
    ("pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime", "12.8", "10.3", "pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime"),
    ("nvidia/cuda:11.7.1-base-ubuntu22.04", "11.7", "8.9", "nvidia/cuda:11.8.0-base-ubuntu22.04"),
    ("nvidia/cuda:11.7.1-base-ubuntu22.04", "11.7", "8.0", ""),
    ("ghcr.io/me/train:cuda11.6", "11.6", "9.0", "a ghcr.io/me/train tag built for CUDA 11.8 or newer"),
    ("pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime", "11.6", "99.0", ""),  # an architecture not in the table
    ("img:latest", None, "9.0", ""),  # the image's CUDA is not known
]


@pytest.mark.parametrize("image,cuda,cap,offered", [r for r in ARCH], ids=[f"{r[0]}-sm{r[2]}" for r in ARCH])
def test_arch_table(image, cuda, cap, offered):
    assert gpu.parse_cuda_requirement([], image) == cuda
    card = gpu.Gpu(0, "GPU", "GPU-x", compute_cap=cap)
    message = gpu.arch_mismatch(image, cuda, [card])
    assert (message.endswith(f"use {offered}") if offered else message == ""), message


def test_no_kernel_image_in_plain_words():
    torch_error = ("Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
                   "RuntimeError: CUDA error: no kernel image is available for execution on the device\n"
                   "CUDA kernel errors might be asynchronously reported at some other API call\n")
    assert gpu.explain_kernel_failure(torch_error).startswith(
        "the image's CUDA build has no kernel for this GPU's architecture")
    assert gpu.explain_kernel_failure("boom\nRuntimeError: out of memory\n") == "RuntimeError: out of memory"
