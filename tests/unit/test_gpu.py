"""gpu: nvidia-smi and lspci parsers on outputs in the real formats, and on real H200 captures."""
import re
from pathlib import Path

import pytest

from gpufleet import gpu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
H200 = FIXTURES / "h200-driver580"  # captured on a real H200 host: see its README.md


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def h200(name: str) -> str:
    return (H200 / name).read_text(encoding="utf-8")


# --- the real H200 host (driver 580.159.04, CUDA 13.0) ---

def test_h200_default_table():
    assert gpu.parse_smi_table_cuda(h200("nvidia-smi.txt")) == ("580.159.04", "13.0")
    assert gpu.classify_smi_failure(h200("nvidia-smi.txt")) is None


UUID = "GPU-de2bd871-34b9-9b62-fb4a-85bede93097e"


@pytest.mark.parametrize("name", ["query-gpu.csv", "query-gpu-header.csv"])
def test_h200_query_gpu_csv_with_and_without_header(name):
    [h] = gpu.parse_query_gpu(h200(name))
    assert h == gpu.Gpu(0, "NVIDIA H200", UUID, "580.159.04", 143771, "9.0", "00000000:00:06.0")


def test_h200_list_and_xml():
    assert gpu.parse_smi_list(h200("list-L.txt")) == [f"GPU 0: NVIDIA H200 (UUID: {UUID})"]
    xml = gpu.parse_smi_xml(h200("q-x.xml"))
    assert (xml["driver"], xml["cuda"]) == ("580.159.04", "13.0")
    assert xml["gpus"] == [{"name": "NVIDIA H200", "uuid": UUID, "mig": "Disabled"}]


def test_h200_table_with_a_process_still_parses():
    assert gpu.parse_smi_table_cuda(h200("nvidia-smi-busy.txt")) == ("580.159.04", "13.0")


def test_h200_driver_supports_images():
    _, cuda = gpu.parse_smi_table_cuda(h200("nvidia-smi.txt"))
    assert gpu.driver_supports_cuda(cuda, "12.8") and gpu.driver_supports_cuda(cuda, "13.0")
    assert not gpu.driver_supports_cuda(cuda, "13.1")


# --- own fixtures ---

TABLES = [
    ("smi-2xa100-535.txt", ("535.161.07", "12.2")),
    ("smi-head5-2xa100-535.txt", ("535.161.07", "12.2")),  # what the probe keeps: `nvidia-smi | head -n 5`
    ("query-no-devices.txt", None),
    ("fail-driver-not-loaded.txt", None),
]


@pytest.mark.parametrize("name,expected", TABLES, ids=[t[0] for t in TABLES])
def test_parse_smi_table_cuda(name, expected):
    assert gpu.parse_smi_table_cuda(fixture(name)) == expected


def test_parse_smi_table_cuda_also_reads_q_text():
    text = "Timestamp                                 : Thu Nov 14 10:45:47 2024\n" \
           "Driver Version                            : 555.42.02\nCUDA Version                              : 12.5\n"
    assert gpu.parse_smi_table_cuda(text) == ("555.42.02", "12.5")


A100 = [gpu.Gpu(0, "NVIDIA A100 80GB PCIe", "GPU-3f2a9c1e-5b7d-4e0a-9c21-7d3e8f1a2b3c", "535.161.07", 81920, "8.0",
                "00000000:17:00.0"),
        gpu.Gpu(1, "NVIDIA A100 80GB PCIe", "GPU-8b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e", "535.161.07", 81920, "8.0",
                "00000000:65:00.0")]
T4 = gpu.Gpu(0, "Tesla T4", "GPU-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d", "470.239.06", 15360, "7.5", "00000000:00:04.0")
QUERIES = [
    ("query-noheader-nounits-2xa100.csv", A100),  # exactly what the probe asks for
    ("query-header-units-t4.csv", [T4]),
    ("query-header-reordered-t4.csv", [gpu.Gpu(0, "Tesla T4", memory_total_mib=15360, pci_bus_id="00000000:00:04.0")]),
    ("query-no-devices.txt", []),
    ("fail-driver-not-loaded.txt", []),
]


@pytest.mark.parametrize("name,expected", QUERIES, ids=[q[0] for q in QUERIES])
def test_parse_query_gpu(name, expected):
    assert gpu.parse_query_gpu(fixture(name)) == expected


def test_parse_query_gpu_missing_and_na_cells():
    assert gpu.parse_query_gpu("0, NVIDIA H100 80GB HBM3\n") == [gpu.Gpu(0, "NVIDIA H100 80GB HBM3")]
    [g] = gpu.parse_query_gpu("0, GRID A100-40C, GPU-x, 535.1, [N/A], [N/A], 00000000:02:00.0\n")
    assert g.memory_total_mib == 0 and g.compute_cap == "[N/A]"


@pytest.mark.parametrize("name,expected", [
    ("list-L-2xa100.txt", ["GPU 0: NVIDIA A100 80GB PCIe (UUID: GPU-3f2a9c1e-5b7d-4e0a-9c21-7d3e8f1a2b3c)",
                           "GPU 1: NVIDIA A100 80GB PCIe (UUID: GPU-8b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e)"]),
    ("list-L-mig.txt", ["GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1d2e3f4a-5b6c-7d8e-9f0a-1b2c3d4e5f6a)",
                        "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-4a5b6c7d-8e9f-0a1b-2c3d-4e5f6a7b8c9d)"]),
    ("fail-driver-not-loaded.txt", []),
])
def test_parse_smi_list_counts_gpus_not_mig_devices(name, expected):
    assert gpu.parse_smi_list(fixture(name)) == expected


def test_parse_smi_xml():
    xml = gpu.parse_smi_xml(fixture("q-x-2xa100-535.xml"))
    assert (xml["driver"], xml["cuda"]) == ("535.161.07", "12.2")
    assert [(g["name"], g["mig"]) for g in xml["gpus"]] == [("NVIDIA A100 80GB PCIe", "Disabled"),
                                                            ("NVIDIA A100 80GB PCIe", "Enabled")]


FAILURES = [
    ("fail-driver-not-loaded.txt", r"cannot talk to the NVIDIA driver"),
    ("fail-nvml-version-mismatch.txt", r"kernel module and the driver libraries differ \(reboot"),
    ("fail-libnvidia-ml-missing.txt", r"libnvidia-ml\.so\) are missing"),
    ("fail-nvml-unknown.txt", r"^NVML could not be initialised$"),
    ("query-no-devices.txt", r"loaded but found no GPU"),
    ("fail-command-not-found.txt", None),
    ("smi-2xa100-535.txt", None),
]


@pytest.mark.parametrize("name,pattern", FAILURES, ids=[f[0] for f in FAILURES])
def test_classify_smi_failure(name, pattern):
    reason = gpu.classify_smi_failure(fixture(name))
    if pattern is None:
        assert reason is None
    else:
        assert reason and "\n" not in reason
        assert re.search(pattern, reason), reason


def test_lspci_finds_nvidia_gpus_not_bridges_audio_or_bmc_vga():
    gpus = gpu.parse_lspci_nvidia(fixture("lspci-nn-8xh100-nvswitch.txt"))
    assert len(gpus) == 8 and [g.index for g in gpus] == list(range(8))
    assert gpus[0].pci_bus_id == "18:00.0" and "H100 SXM5 80GB" in gpus[0].name
    [rtx] = gpu.parse_lspci_nvidia(fixture("lspci-nn-rtx4090.txt"))
    assert rtx.pci_bus_id == "01:00.0" and "GeForce RTX 4090" in rtx.name
    assert gpu.parse_lspci_nvidia("") == []


@pytest.mark.parametrize("driver,required,ok", [
    ("12.2", "12.1", True), ("12.2", "12.2", True), ("12.2", "12.4", False), ("13.0", "12.8", True),
    ("11.4", "11.6", False), ("10.2", "9.0", True), ("", "11.0", False),
])
def test_driver_supports_cuda(driver, required, ok):
    assert gpu.driver_supports_cuda(driver, required) is ok


@pytest.mark.parametrize("env,image,expected", [
    (["NVIDIA_REQUIRE_CUDA=cuda>=11.6 brand=tesla,driver>=418,driver<419", "CUDA_VERSION=11.6.2"], "x", "11.6"),
    ({"CUDA_VERSION": "12.1.1"}, "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel", "12.1"),
    ([], "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime", "11.6"),
    ([], "registry.local:5000/pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "12.4"),
    ([], "registry.local:5000/ubuntu", None),
    (None, "python:3.12", None),
])
def test_parse_cuda_requirement(env, image, expected):
    assert gpu.parse_cuda_requirement(env, image) == expected


# --- GPU processes of a container, seen from its host (fixtures: see tests/fixtures/gpu/HANDMADE.md) ---

APPS = [gpu.ComputeApp(48213, "/opt/conda/bin/python", 40960), gpu.ComputeApp(48213, "/opt/conda/bin/python", 40958),
        gpu.ComputeApp(51002, "/usr/bin/python3", 10240), gpu.ComputeApp(60111, "./train", None)]


@pytest.mark.parametrize("name,expected", [
    ("handmade-compute-apps-noheader-nounits.csv", APPS),  # exactly what ops.rm asks for
    ("handmade-compute-apps-header-units.csv", [gpu.ComputeApp(48213, "/opt/conda/bin/python", 40960),
                                                gpu.ComputeApp(51002, "/usr/bin/python3", 10240)]),
    ("handmade-compute-apps-none.csv", []),
    ("h200-driver580/compute-apps-busy.csv", [gpu.ComputeApp(444, "python3", 1634)]),  # real captures
    ("h200-driver580/compute-apps-busy-header.csv", [gpu.ComputeApp(444, "python3", 1634)]),
    ("h200-driver580/compute-apps-idle.csv", []),
    ("fail-driver-not-loaded.txt", []),
    ("query-no-devices.txt", []),
])
def test_parse_compute_apps(name, expected):
    assert gpu.parse_compute_apps(fixture(name)) == expected


def test_parse_compute_apps_keeps_a_name_with_a_comma():
    assert gpu.parse_compute_apps("77, python train.py --a=1, b, 512\n") == [
        gpu.ComputeApp(77, "python train.py --a=1, b", 512)]


@pytest.mark.parametrize("name", ["docker-top-eo-pid.txt", "docker-top-eo-pid-comm.txt", "docker-top-default.txt"])
def test_parse_top_pids_real_docker_top(name):
    # the real captures: the container's sh and its two sleeps, host PIDs, whatever columns ps was asked for
    assert gpu.parse_top_pids(fixture(name)) == {27608, 27636, 27637}


@pytest.mark.parametrize("text", ["", "Error response from daemon: Container abc is not running\n",
                                  "UID CMD\nroot sleep\n"])
def test_parse_top_pids_without_a_pid_column(text):
    assert gpu.parse_top_pids(text) is None


def test_container_gpu_processes_maps_host_pids_and_merges_gpus():
    assert gpu.container_gpu_processes(APPS, {48213, 60111, 1}) == [
        gpu.ComputeApp(48213, "/opt/conda/bin/python", 81918), gpu.ComputeApp(60111, "./train", None)]
    assert gpu.container_gpu_processes(APPS, {27608}) == []
    assert gpu.container_gpu_processes([], {48213}) == []


TOP = (0, "PID\n48213\n48299\n")
VERDICTS = [  # (nvidia-smi on the host: None = absent, else (rc, output); docker top; the verdict)
    (None, TOP, ""),  # no nvidia-smi on the host: no driver, no GPU process
    ((0, fixture("handmade-compute-apps-none.csv")), TOP, ""),
    ((0, fixture("h200-driver580/compute-apps-busy.csv")), (0, "PID\n431\n444\n"),  # a real H200's torch process
     "GPU processes are running in it (pid 444 python3 (1634 MiB))"),
    ((0, fixture("h200-driver580/compute-apps-idle.csv")), (0, "PID\n431\n444\n"), ""),
    ((0, fixture("handmade-compute-apps-noheader-nounits.csv")), TOP,
     "GPU processes are running in it (pid 48213 /opt/conda/bin/python (81918 MiB))"),
    ((0, fixture("handmade-compute-apps-noheader-nounits.csv")), (0, "PID\n60111\n51002\n"),
     "GPU processes are running in it (pid 51002 /usr/bin/python3 (10240 MiB), pid 60111 ./train)"),
    ((0, fixture("handmade-compute-apps-noheader-nounits.csv")), (0, "PID\n1\n"), ""),  # others' processes
    ((0, fixture("handmade-compute-apps-noheader-nounits.csv")), (1, "Error: No such container: dev\n"),
     "cannot tell whether GPU processes run in it: docker top failed (Error: No such container: dev)"),
    ((0, fixture("handmade-compute-apps-none.csv")), (1, "Error\n"), ""),  # nothing on any GPU: no need
    ((9, fixture("fail-driver-not-loaded.txt")), TOP, "cannot tell whether GPU processes run in it: nvidia-smi "
     "failed on the host (nvidia-smi cannot talk to the NVIDIA driver (not loaded, or a version mismatch))"),
    ((18, fixture("fail-nvml-version-mismatch.txt")), TOP, "cannot tell whether GPU processes run in it: "
     "nvidia-smi failed on the host (the loaded NVIDIA kernel module and the driver libraries differ (reboot "
     "after a driver upgrade))"),
    ((6, fixture("query-no-devices.txt")), TOP, ""),  # the driver answers: no GPU at all
    ((4, "Insufficient Permissions\n"), TOP,
     "cannot tell whether GPU processes run in it: nvidia-smi failed on the host (Insufficient Permissions)"),
    ((3, ""), TOP, "cannot tell whether GPU processes run in it: nvidia-smi failed on the host (exit 3)"),
]


@pytest.mark.parametrize("smi,top,verdict", VERDICTS)
def test_gpu_work_verdict(smi, top, verdict):
    assert gpu.gpu_work_verdict(smi, top) == verdict
