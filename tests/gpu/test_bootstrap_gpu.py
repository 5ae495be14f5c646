"""The GPU proof, end to end on a real NVIDIA host: `bootstrap` through the real `fab` CLI takes it from
driver-only to torch.cuda in a container reached with OpenSSH and the generated ssh config.

Run by `bash scripts/gpu-proof.sh run STACK VIA` on the GPU host (it prepares what the borrowed machine
lacks and sets GPUFLEET_PROOF_DIR, _STACK and _VIA); skipped elsewhere. STACK is the engine and toolkit the
proof's mirror serves (26: Docker 26 + the toolkit 1.18; 29: Docker 29 + the toolkit 1.20), VIA how the tool
reaches the host (local: `address = "local"`; ssh: the host's sshd on 127.0.0.1:2200, as a user's server).
Every check reads the host's real state (dpkg, docker, the container through ssh), not the tool's report.
The record goes to $OUT/gpu-proof-STACK-VIA.md (or the work dir).
"""
from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROOF = Path(os.environ.get("GPUFLEET_PROOF_DIR", "/nonexistent"))
STACK, VIA = os.environ.get("GPUFLEET_PROOF_STACK", "26"), os.environ.get("GPUFLEET_PROOF_VIA", "local")
# what each stack's mirror serves, and the GPU path the tool should pick there
DOCKER, TOOLKIT, GPU_PATH = {"26": ("26.1.5", "1.18.0", "runtime"), "29": ("29.7.2", "1.20.0", "cdi")}[STACK]
WORK = Path("/tmp/gpufleet-proof")
NOFILE = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1048576)  # this VM's ceiling (a server's is higher)
SSH_LIBS = ":".join(str(WORK / "ssh" / d) for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
IMAGE, NEWER_CUDA_IMAGE = "gpufleet-proof/torch:local", "gpufleet-proof/torch:needs-cuda-13.1"
PATH_IN_IMAGE = "/opt/torch/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TORCH = ("import torch; x = torch.randn(4096, 4096, device='cuda'); y = x @ x; torch.cuda.synchronize(); "
         "print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0), "
         "'matmul', tuple(y.shape), y.device)")


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


MIRROR = PROOF / "mirror"  # both stacks: gpu-proof.sh pins the older engine with apt preferences for 26
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not has_gpu(), reason="no NVIDIA GPU here"),
              pytest.mark.skipif(not MIRROR.is_dir(), reason="no proof kit: bash scripts/gpu-proof.sh run")]

RECORD = Path(os.environ.get("OUT", str(WORK))) / f"gpu-proof-{STACK}-{VIA}.md"


def note(text: str) -> None:
    """Print and keep: every module of tests/gpu writes into this run's record as it goes."""
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.open("a") as record:
        record.write(text + "\n")
    print(text, flush=True)


def sh(command: str, check: bool = True) -> str:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"`{command}` exited {result.returncode}: {result.stdout[-2000:]} {result.stderr[-2000:]}")
    return result.stdout.strip()


def inventory(extra: str = "") -> Path:
    mirror = json.loads((MIRROR / "MIRROR.json").read_text())
    # over SSH: the machine's own sshd on loopback (gpu-proof.sh starts it and pins its key in known_hosts)
    reach = 'address = "local"' if VIA == "local" else 'address = "127.0.0.1"\nport = 2200\nuser = "root"'
    text = f'''# The GPU proof's inventory: this machine ({VIA}), from the proof's mirror on loopback.
# Where this machine differs from a real server, the settings say so.
[run]
log_dir = "{WORK}/logs"

[local]
ssh_config = "{WORK}/ssh_config"
known_hosts = "{WORK}/known_hosts"
identity = "{WORK}/id_ed25519"
public_keys = ["{WORK}/id_ed25519.pub"]

[hosts.h200]
{reach}
docker_source = "docker-ce"
docker_mirror = "http://127.0.0.1:8000/docker-ce/linux"
docker_key_fingerprint = "{mirror["docker_key_fingerprint"]}"
docker_plugins = false            # the proof's mirror carries no plugins: one call carries 64 MiB
nvidia_mirror = "http://127.0.0.1:8000/libnvidia-container"
nvidia_key_fingerprint = "{mirror["nvidia_key_fingerprint"]}"
nvidia_toolkit_version = "{TOOLKIT}"
gpu_path = "{GPU_PATH}"               # no systemd here: auto would take the runtime (nothing makes a CDI spec at boot)
data_root = "/var/lib/docker-proof"
registry_mirrors = ["http://127.0.0.1:5000"]   # none answers there: the image is made on this machine
daemon_json = {{ iptables = false, "ip-masq" = false }}   # this VM's kernel has no NAT set up for Docker
tools = []                        # no network for apt inside the container: its sshd comes in the image
github_access = "none"
forward_agent = false

[hosts.h200.containers.dev]
image = "{IMAGE}"
ssh_port = 2222
shm_size = "16g"
gpus = "all"
# torch lives in /opt/torch on this machine; the driver in /usr/local/nvidia, whose libraries the toolkit
# mounts in but whose nvidia-smi (behind /usr/bin/nvidia-smi, a wrapper) it does not
volumes = ["/opt/torch:/opt/torch:ro", "/usr/local/nvidia/bin:/usr/local/nvidia/bin:ro", "{WORK}/workspace:/workspace"]
# this VM cannot raise the open-files limit past what its processes have (the default is 1048576)
ulimit_nofile = {NOFILE}
{extra}'''
    path = WORK / ("hosts-extra.toml" if extra else "hosts.toml")
    path.write_text(text)
    return path


def fab(*args: str, inv: Path | None = None) -> subprocess.CompletedProcess:
    out = WORK / "recap.json"
    out.unlink(missing_ok=True)
    local = args[0] in ("gen-ssh-config", "show-host")
    env = dict(os.environ, FABRIC_INVENTORY=str(inv or inventory()))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fabric", "-r", str(REPO), *args,
                             *([] if local else ["--json", str(out)])], cwd=WORK, env=env, capture_output=True,
                            text=True, timeout=1200)
    result.seconds = time.monotonic() - started
    result.recap = json.loads(out.read_text()) if out.exists() else None
    result.host = result.recap["hosts"][0] if result.recap else {}
    note(f"\n### `fab {' '.join(args)}` — exit {result.returncode}, {result.seconds:.1f} s\n\n```\n"
         f"{result.stdout[-6000:]}{result.stderr[-2000:]}```")
    return result


def ssh(alias: str, command: str) -> subprocess.CompletedProcess:
    argv = [str(WORK / "ssh" / "usr/bin/ssh"), "-F", str(WORK / "ssh_config"), "-o", "BatchMode=yes", alias, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=dict(os.environ, LD_LIBRARY_PATH=SSH_LIBS))


def make_image() -> None:
    """The container image, made here (no registry): this machine's own root, plus Debian 12's OpenSSH
    (sshd, ssh-keygen) and its three libraries Ubuntu 24.04 lacks, plus sshd's privilege-separation user."""
    extra = WORK / "image-extra"
    shutil.rmtree(extra, ignore_errors=True)
    for name in ("openssh-server", "openssh-client", "openssh-sftp-server", "libwrap0", "libnsl2", "libtirpc3"):
        sh(f"dpkg -x {PROOF}/debs/{name}_*.deb {extra}")
    for top in ("lib", "bin", "sbin"):  # Ubuntu 24.04 has a merged /usr: /lib is a link to usr/lib
        if (extra / top).is_dir():
            sh(f"mkdir -p {extra}/usr/{top} && cp -a {extra}/{top}/. {extra}/usr/{top}/ && rm -rf {extra}/{top}")
    (extra / "etc").mkdir(exist_ok=True)
    passwd = Path("/etc/passwd").read_text()
    (extra / "etc" / "passwd").write_text(passwd + ("" if "\nsshd:" in passwd else
                                                    "sshd:x:999:65534::/run/sshd:/usr/sbin/nologin\n"))
    for d in ("tmp", "root", "run", "home", "opt", "mnt", "var", "srv", "workspace"):
        (extra / d).mkdir(exist_ok=True)
    (extra / "tmp").chmod(0o1777)
    excludes = " ".join(f"--exclude={shlex.quote(p)}" for p in ("usr/local/cuda*", "usr/share/doc", "usr/share/man"))
    sh(f"tar -C / {excludes} -c bin sbin lib lib64 usr etc | docker import - gpufleet-proof/root:local >/dev/null")
    cid = sh("docker create gpufleet-proof/root:local /bin/true")
    sh(f"docker cp {extra}/. {cid}:/ && docker commit --change 'ENV PATH={PATH_IN_IMAGE}' "
       f"--change 'CMD [\"sleep\", \"infinity\"]' {cid} {IMAGE} >/dev/null && docker rm {cid} >/dev/null")
    cid = sh(f"docker create --entrypoint /usr/sbin/ldconfig {IMAGE}")  # the added libraries in ld.so.cache
    sh(f"docker start -a {cid} && docker commit --change 'ENTRYPOINT []' --change 'CMD [\"sleep\", \"infinity\"]' "
       f"{cid} {IMAGE} >/dev/null && docker rm {cid} >/dev/null")
    cid = sh(f"docker create {IMAGE} /bin/true")
    sh(f"docker commit --change 'ENV NVIDIA_REQUIRE_CUDA=cuda>=13.1' --change 'ENV CUDA_VERSION=13.1.0' "
       f"{cid} {NEWER_CUDA_IMAGE} >/dev/null && docker rm {cid} >/dev/null")


@pytest.fixture(scope="module")
def proof():
    (WORK / "workspace").mkdir(parents=True, exist_ok=True)
    (WORK / "workspace" / "hello.txt").write_text("from the host\n")
    if not (WORK / "id_ed25519").exists():
        subprocess.run([str(WORK / "ssh/usr/bin/ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f",
                        str(WORK / "id_ed25519")], check=True, env=dict(os.environ, LD_LIBRARY_PATH=SSH_LIBS))
    reached = "over SSH" if VIA == "ssh" else 'as address = "local"'
    note(f"# GPU proof record: Docker {DOCKER} + the toolkit {TOOLKIT}, the host reached {reached}\n\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; commit "
         f"{sh('git -C ' + str(REPO) + ' rev-parse --short HEAD', check=False) or '(no git here)'}\n\n```\n"
         f"{sh('nvidia-smi -L')}\n{sh('nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader')}\n"
         f"{sh('. /etc/os-release; echo $PRETTY_NAME; uname -r')}\n```")
    runs = {"engine": fab("-H", "h200", "docker.install"), "toolkit": fab("-H", "h200", "nvidia.install")}
    started = time.monotonic()
    make_image()
    note(f"\nimage {IMAGE} made from this machine's root in {time.monotonic() - started:.0f} s")
    runs["first"] = fab("-H", "h200", "bootstrap")
    # what sshd's folder check depends on (a Docker 29 run found /run/sshd group- or world-writable)
    inside = "umask; stat -c '%a %U %n' /run /run/sshd"
    note(f"\n```\n$ umask; docker exec dev sh -c {shlex.quote(inside)}\n{sh('umask', check=False)}\n"
         f"{sh('docker exec dev sh -c ' + shlex.quote(inside), check=False)}\n```")
    runs["ssh_config"] = fab("gen-ssh-config")
    runs["doctor"] = fab("-H", "h200", "doctor")
    runs["second"] = fab("-H", "h200", "bootstrap")
    runs["newer_cuda"] = fab("-H", "h200", "containers.up", inv=inventory(
        f'\n[hosts.h200.containers.newer]\nimage = "{NEWER_CUDA_IMAGE}"\nssh_port = 2223\ngpus = "all"\n'))
    return runs


def test_docker_ce_and_the_toolkit_come_from_the_pinned_mirror(proof):
    for run in ("engine", "toolkit"):
        assert proof[run].returncode == 0, proof[run].stdout[-3000:]
    packages = sh("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' docker-ce containerd.io nvidia-container-toolkit")
    note(f"\n```\n{packages}\n{sh('apt-cache policy docker-ce | head -4')}\n```")
    assert packages.count("install ok installed") == 3, packages
    versions = dict(line.split()[:2] for line in packages.splitlines())
    assert versions["docker-ce"].split(":")[-1].startswith(DOCKER + "-") and versions["nvidia-container-toolkit"].startswith(TOOLKIT)
    info = json.loads(sh("docker info --format '{{json .}}'"))
    assert info["ServerVersion"].split("+")[0] == DOCKER and info["DockerRootDir"] == "/var/lib/docker-proof", info["ServerVersion"]
    # what the engine itself reports for the GPU: the runtime registered, or CDI devices it discovered
    cdi = [d["ID"] for d in info.get("DiscoveredDevices") or [] if d.get("Source") == "cdi"]
    note(f"\nthe engine's GPU view: runtimes {sorted(info['Runtimes'])}, CDI devices {cdi}")
    assert "nvidia" in info["Runtimes"] if GPU_PATH == "runtime" else "nvidia.com/gpu=all" in cdi, info
    assert [m.rstrip("/") for m in info["RegistryConfig"]["Mirrors"]] == ["http://127.0.0.1:5000"]
    assert not os.path.isdir("/run/systemd/system")  # started with `service`, as on WSL2
    assert sh("stat -c %a /etc/apt/keyrings/docker.asc /etc/apt/keyrings/nvidia-container-toolkit.asc").split() == ["644", "644"]


def test_the_container_runs_with_all_gpus_shm_volumes_and_ssh_on_loopback(proof):
    assert proof["first"].returncode == 0, proof["first"].stdout[-4000:]
    state = json.loads(sh("docker inspect dev --format '{{json .}}'"))
    host = state["HostConfig"]
    assert state["State"]["Running"]
    assert host["ShmSize"] == 16 * 1024 ** 3
    assert host["PortBindings"]["22/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "2222"}]
    note(f"\nthe container's GPU request: runtime {host['Runtime']}, {json.dumps(host['DeviceRequests'])}")
    if GPU_PATH == "runtime":
        assert host["Runtime"] == "nvidia" and host["DeviceRequests"][0]["Count"] == -1
        assert [r["Capabilities"] for r in host["DeviceRequests"]] == [[["gpu"]]]
    else:  # the CLI turns `--device nvidia.com/gpu=…` into a request for the engine's CDI driver
        assert [(r["Driver"], r["DeviceIDs"]) for r in host["DeviceRequests"]] == [("cdi", ["nvidia.com/gpu=all"])]
    # DataLoader workers need open files: the spec's ulimit, not the engine's default of 1024
    assert [u for u in host["Ulimits"] or [] if u["Name"] == "nofile"][0]["Soft"] == NOFILE, host["Ulimits"]
    assert f"{WORK}/workspace:/workspace" in host["Binds"]


def test_through_the_generated_ssh_config_the_container_has_the_gpu_and_torch_cuda(proof):
    assert proof["ssh_config"].returncode == 0, proof["ssh_config"].stdout
    listed = ssh("h200-dev", "nvidia-smi -L")
    torch = ssh("h200-dev", f"python3 -c {shlex.quote(TORCH)}")
    shm = ssh("h200-dev", "df -h /dev/shm | tail -1; cat /workspace/hello.txt; findmnt -n -o TARGET /workspace; ulimit -n")
    note(f"\n### in the container, over ssh (`ssh -F {WORK}/ssh_config h200-dev`)\n\n```\n$ nvidia-smi -L\n"
         f"{listed.stdout}{listed.stderr}\n$ python3 -c '…'\n{torch.stdout}{torch.stderr[-1500:]}\n"
         f"$ df -h /dev/shm; cat /workspace/hello.txt; findmnt /workspace; ulimit -n\n{shm.stdout}{shm.stderr}```")
    gpu_name = sh("nvidia-smi --query-gpu=name --format=csv,noheader").splitlines()[0]  # the host's own card
    assert listed.returncode == 0 and gpu_name in listed.stdout, listed.stderr
    assert torch.returncode == 0 and f"cuda True {gpu_name}" in torch.stdout and "cuda:0" in torch.stdout, torch.stderr
    assert " 16G " in shm.stdout and "from the host" in shm.stdout and "/workspace" in shm.stdout, shm.stdout


def test_doctor_passes_its_gpu_checks_on_the_host_and_in_the_container(proof):
    out = proof["doctor"].stdout
    lines = [line for line in out.splitlines() if "gpu" in line or "torch" in line or "cuda" in line]
    assert lines and not [line for line in lines if " fail " in f" {line} "], out


def test_a_second_bootstrap_changes_nothing(proof):
    second = proof["second"]
    assert second.returncode == 0 and second.host["changed"] == 0, second.stdout[-3000:]


@pytest.mark.skipif(VIA != "local", reason="the three paths are run here through a local session")
def test_the_probe_reads_the_gpu_host_alike_through_the_reader_the_engine_api_and_the_cli(proof):
    """The facts probe's three ways to read Docker on this host (this machine's python3): the reader,
    which reads the container from the host, runs here, and all agree."""
    from types import SimpleNamespace

    from gpufleet import facts
    from gpufleet.inventory import load
    from gpufleet.paths import probe_request
    from gpufleet.remote import LocalSession, Script
    request = probe_request(SimpleNamespace(host=load(inventory()).hosts["h200"], run_state={}))
    direct = subprocess.run(facts.reader_argv(request), capture_output=True, text=True)
    assert direct.returncode == 0 and "inside:0" in facts.split_sections(direct.stdout), direct.stderr[-2000:]
    script = facts.probe_script(request)
    no_reader = script.replace(facts.READER_GUARD, "false")
    read, times = {}, []
    for path, text in (("reader", script), ("Engine API", no_reader), ("CLI", no_reader.replace(facts.ENGINE_API, "false"))):
        started = time.monotonic()
        out = LocalSession().run(Script(text), sudo=True, check=False).stdout
        times.append(f"{path} {time.monotonic() - started:.2f} s")
        assert facts.missing_sections(out, request) == [], path
        read[path] = facts.parse_probe(out, request)
    note(f"\nthe facts probe, wall time through each path: {', '.join(times)}")
    a = read["reader"]
    assert a.inside["dev"].sshd_running and a.has_gpu
    for path, b in read.items():
        for field in ("packages", "containers", "inside", "images", "files", "users", "snapshots", "gpus"):
            assert getattr(a, field) == getattr(b, field), (path, field)


def test_an_image_that_needs_a_newer_cuda_is_refused_before_anything_is_created(proof):
    refused = proof["newer_cuda"]
    assert refused.returncode == 1
    assert "needs CUDA 13.1 but driver" in refused.host["error"] and "supports CUDA 13.0" in refused.host["error"]
    assert sh("docker ps -a --filter name=newer --format '{{.Names}}'") == ""


def test_the_images_live_under_data_root(proof):
    """data_root is the big disk: the image's bytes are under it whatever the engine's image store
    (Docker 29's containerd store keeps them under containerd's root, which the tool moves there)."""
    image = int(sh(f"docker image inspect {IMAGE} --format '{{{{.Size}}}}'"))
    used = {path: int(sh(f"du -sb {path} 2>/dev/null | cut -f1", check=False) or 0)
            for path in ("/var/lib/docker-proof", "/var/lib/containerd", "/var/lib/docker")}
    store = sh("docker info --format '{{json .DriverStatus}}'")
    note(f"\nimage {IMAGE}: {image:,} bytes; du -sb: " + ", ".join(f"{p} {n:,}" for p, n in used.items())
         + f"; DriverStatus {store}")
    assert used["/var/lib/docker-proof"] >= image * 0.9, used
    assert used["/var/lib/containerd"] < image / 10 and used["/var/lib/docker"] < image / 10, used
