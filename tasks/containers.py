"""The long-lived GPU containers and the sshd inside them.

Each container is run from a typed spec (gpufleet.inventory.ContainerSpec).  The
spec it was created from is kept in the label `gpufleet.spec`; when the inventory
asks for something else, the plan lists the fields that differ and the container
is re-created with the same volumes, after a snapshot if the user changed its files
(gpufleet.container_changes tells the user's changes from the tool's own writes).
"""
from __future__ import annotations

import hashlib
import json as jsonlib
import secrets
import shlex
import time

from invoke import Collection, task

from gpufleet import gpu, gpu_assign, pending
from gpufleet.container_changes import SNAPSHOT_STARTED_LABEL, read_user_changes, tracks_tool_writes
from gpufleet.errors import FleetError
from gpufleet.fleet import fleet_task
from gpufleet.facts import ABSENT, LINK, MANAGED_LABEL, SNAPSHOT_LABEL, parse_snapshots
from gpufleet.files import FileChange, file_action, in_container, render_template
from gpufleet.inventory import ContainerSpec
from gpufleet.paths import CONTAINER_DIR, IN_CONTAINER_DIR, container_dir
from gpufleet.plan import Action, Plan, Step
from gpufleet.remote import Secret, Script
from . import HOST_TASK_HELP, inside
from .docker import wanted_daemon_keys

SPEC_LABEL = "gpufleet.spec"


# --- the spec, resolved for one host ---

def default_shm_size(mem_total_mb: int) -> str:
    """A quarter of host memory, between 1g and 64g: PyTorch data loaders live in /dev/shm."""
    gb = max(1, min(64, mem_total_mb // 1024 // 4))
    return f"{gb}g"


def gpus_in_words(c, spec: ContainerSpec) -> str:
    """Which GPUs the container gets, for the plan: none (and why), all, or index, model and UUID."""
    gpus = gpu_assignment(c)[spec.name]
    if gpus == "none":
        return "gpus = none" if spec.gpus == "none" else "no GPUs: host has no NVIDIA GPU/runtime"
    if gpus == "all":
        return f"all {len(c.facts().gpus)} GPU(s)"
    return "on " + gpu_assign.describe(gpus, gpu_devices(c.facts()))


def gpu_devices(f) -> list[gpu_assign.Device]:
    """The GPUs and MIG instances a container of this host can be given (those nvidia-smi lists)."""
    return gpu_assign.devices(f.gpus if f.gpu_source == "nvidia-smi" else [], f.migs)


def gpu_record(f) -> dict[str, dict]:
    """The server's record of which GPUs each container holds (gpu_assign.GPU_RECORD)."""
    return gpu_assign.parse_record(f.files.get(gpu_assign.GPU_RECORD, ABSENT).text)


def gpu_assignment(c) -> dict[str, str | list[str]]:
    """{container: "none", "all" or its sorted GPU/MIG UUIDs} for every container of the host.

    Indices and counts become UUIDs (gpu_assign.resolve, sticky through the server's record); a clash, a GPU
    the server has not, or a count larger than what is free is refused before anything runs."""
    f = c.facts()
    registered = "nvidia" in ((f.docker_info or {}).get("Runtimes") or {})
    # a dry run does not apply docker.configure, which comes first and registers the runtime daemon.json names
    coming = c.dry_run and f.docker_running and "nvidia" in (wanted_daemon_keys(c).get("runtimes") or {})
    ready = f.has_gpu and (registered or coming)
    asked: dict[str, object] = {}
    wanted: dict[str, str | list[str]] = {}
    for name, spec in c.host.containers.items():
        if spec.gpus == "none" or (spec.gpus == "auto" and not ready):
            wanted[name] = "none"
        else:
            asked[name] = "all" if spec.gpus == "auto" else list(spec.gpus) if isinstance(spec.gpus, tuple) else spec.gpus
    if not asked:
        return wanted
    record = gpu_record(f)
    # a container on the server that the inventory no longer names still holds its GPUs
    elsewhere = {name: held["uuids"] for name, held in record.items()
                 if name not in c.host.containers and name in f.containers and held.get("asked") != "all"}
    uuids = gpu_assign.resolve(asked, gpu_devices(f), record,
                               shared={n for n, s in c.host.containers.items() if s.share_gpus},
                               host_shared=c.host.share_gpus, held_elsewhere=elsewhere)
    for name, value in asked.items():
        if not ready and (spec := c.host.containers[name]).gpus != "auto":
            shown = "'all'" if value == "all" else jsonlib.dumps(value)
            raise FleetError(f"container {spec.name}: gpus = {shown} but this host has no NVIDIA GPU with the "
                             "container toolkit registered (run nvidia.install, or set gpus = 'auto')")
        wanted[name] = "all" if value == "all" else uuids[name]
    return wanted


def gpu_record_action(c) -> Action | None:
    """Write the server's record of which GPUs each container holds, where it changed."""
    f = c.facts()
    wanted = gpu_assignment(c)
    everything = [d.uuid for d in gpu_devices(f) if not d.mig]
    assigned = {name: everything if value == "all" else value for name, value in wanted.items() if value != "none"}
    asked = {name: list(s.gpus) if isinstance(s.gpus, tuple) else "all" if s.gpus == "auto" else s.gpus
             for name, s in c.host.containers.items()}
    old = gpu_record(f)
    record = gpu_assign.new_record(old, assigned, asked, int(time.time()),
                                   keep={n for n in old if n not in c.host.containers and n in f.containers})
    if record == old:
        return None
    change = FileChange(gpu_assign.GPU_RECORD, f.files.get(gpu_assign.GPU_RECORD, ABSENT),
                        gpu_assign.render_record(record), mode="0644", backup=False)
    action = file_action(change)
    action.summary = f"record which GPUs each container holds in {gpu_assign.GPU_RECORD}"
    return action


def arch_check(c, spec: ContainerSpec) -> str:
    """Refuse an image whose CUDA has no kernels for the GPUs the container gets (before a multi-GB pull)."""
    f = c.facts()
    wanted = gpu_assignment(c)[spec.name]
    if wanted == "none":
        return ""
    held = {d.index for d in gpu_devices(f) if wanted == "all" or d.uuid in wanted}
    image = f.images.get(spec.image)
    env = ((image or {}).get("Config") or {}).get("Env") or []
    message = gpu.arch_mismatch(spec.image, gpu.parse_cuda_requirement(env, spec.image),
                                [g for g in f.gpus if g.index in held])
    if not message:
        return ""
    if spec.allow_arch_mismatch:
        return message + " (allowed by allow_arch_mismatch)"
    raise FleetError(f"container {spec.name}: {message}, or set allow_arch_mismatch = true")


def gpu_path(c) -> tuple[str, str]:
    """("runtime" | "cdi", why): how this host's containers get their GPUs (gpu_path, from its facts)."""
    f = c.facts()
    try:
        return gpu.choose_gpu_path(c.host.gpu_path, f.docker_info, f.toolkit_version,
                                   kept_at_boot=gpu.refresh_units(f.systemd, f.cdi_units)[0])
    except ValueError as e:
        raise FleetError(f"host {c.name}: {e}") from None


def resolved_spec(c, spec: ContainerSpec) -> dict:
    """The spec as it will be run on this host; stored in the container's label."""
    gpus = gpu_assignment(c)[spec.name]
    # Docker's own --gpus hook needs libnvidia-container's CLI; the nvidia runtime and CDI work without it
    path = {"gpu_path": gpu_path(c)[0]} if gpus != "none" else {}
    return {
        "image": spec.image,
        "ssh_port": spec.ssh_port,
        "volumes": [str(v) for v in spec.volumes],
        "shm_size": spec.shm_size or default_shm_size(c.facts().mem_total_mb),
        "gpus": gpus,  # "none", "all", or the sorted UUIDs of its GPUs
        # a secret is stored as its hash: the label is readable by everyone in the docker group
        "env": {key: secret_digest(value) if isinstance(value, Secret) else value for key, value in spec.env},
        "restart": spec.restart,
        "hostname": c.inventory.container_alias(c.host.name, spec.name),
        "ulimit_nofile": spec.ulimit_nofile,
        **path,
    }


def secret_digest(value: str) -> str:
    return "secret:sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def run_argv(name: str, doc: dict) -> list[str]:
    """`docker run` for a resolved spec; the SSH port is published on the host's loopback only."""
    argv = ["docker", "run", "-d", "--name", name, "--hostname", doc["hostname"], "--init",
            "--label", f"{MANAGED_LABEL}={name}", "--label", f"{SPEC_LABEL}={jsonlib.dumps(doc, sort_keys=True)}",
            "--restart", doc["restart"], "--shm-size", doc["shm_size"],
            "-p", f"127.0.0.1:{doc['ssh_port']}:22",
            # read-only: the server writes this folder as root, so nothing in it may come from the container
            "-v", f"{container_dir(name)}:{IN_CONTAINER_DIR}:ro"]
    for volume in doc["volumes"]:
        argv += ["-v", volume]
    for key, value in sorted(doc["env"].items()):
        # a secret's value comes from docker's own environment (see docker_run), never the command line
        argv += ["-e", key if value.startswith("secret:sha256:") else f"{key}={value}"]
    if doc.get("ulimit_nofile"):
        argv += ["--ulimit", f"nofile={doc['ulimit_nofile']}"]
    argv += gpu.gpu_run_args(doc.get("gpu_path", "runtime"), doc["gpus"])
    argv += ["--entrypoint", f"{IN_CONTAINER_DIR}/entrypoint.sh", "--", doc.get("restored_from") or doc["image"]]
    return argv


def docker_run(c, name: str, doc: dict, check: bool = True):
    """Run the container; secret env values travel on stdin into docker's environment, so they are
    on no command line (the host's process list, our log) and in no file."""
    argv = run_argv(name, doc)
    secrets = [(key, value) for key, value in c.host.containers[name].env if isinstance(value, Secret)]
    if not secrets:
        return c.run(argv, sudo=True, check=check)
    reads = " && ".join(f"IFS= read -r s{i}" for i in range(len(secrets)))
    assigns = " ".join(f'{key}="$s{i}"' for i, (key, _) in enumerate(secrets))
    script = Script(f"{reads} && exec env {assigns} {shlex.join(argv)}")
    return c.run(script, sudo=True, check=check, stdin="".join(f"{value}\n" for _, value in secrets))


def spec_differences(old: dict, new: dict) -> list[str]:
    """Field-by-field differences between the running spec and the wanted one.

    A container restored from a snapshot keeps running its snapshot image; that is not drift.
    """
    if old.get("runtime") == "nvidia" and "gpu_path" not in old:
        # made before gpu_path: `--runtime nvidia --gpus all` is what gpu_path = runtime runs
        old = {**{k: v for k, v in old.items() if k != "runtime"}, "gpu_path": "runtime"}
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted((set(old) | set(new)) - {"restored_from"})
            if old.get(key) != new.get(key)]


def writable_tool_folder(container: dict) -> list[str]:
    """Pure: why a container made by an earlier version must be re-created: it can write the folder that
    the server writes as root (its entrypoint, sshd_config, host key)."""
    if any(m.get("Destination") == IN_CONTAINER_DIR and m.get("RW") for m in container.get("Mounts") or []):
        return [f"{IN_CONTAINER_DIR} is writable from inside: mount it read-only"]
    return []


def cuda_check(c, spec: ContainerSpec) -> str:
    """Refuse an image that needs a newer CUDA than the driver supports (before a multi-GB pull)."""
    f = c.facts()
    if not f.has_gpu or not f.gpu_cuda:
        return ""
    image = f.images.get(spec.image)
    env = ((image or {}).get("Config") or {}).get("Env") or []
    needed = gpu.parse_cuda_requirement(env, spec.image)
    if not needed or gpu.driver_supports_cuda(f.gpu_cuda, needed):
        return ""
    message = (f"image {spec.image} needs CUDA {needed} but driver {f.gpu_driver} supports CUDA {f.gpu_cuda}")
    if spec.allow_driver_mismatch:
        return message + " (allowed by allow_driver_mismatch)"
    raise FleetError(message + ": upgrade the driver, pick an older image, or set allow_driver_mismatch = true")


# --- containers.run ---

def plan_run(c) -> Plan:
    f = c.facts()
    if not c.host.containers:
        return Plan.ok("no containers in the inventory for this host")
    if not f.docker_running and not c.dry_run:
        return Plan.skipped("Docker is not running yet")
    actions, fine = [], []
    for name, spec in c.host.containers.items():
        entry = FileChange(f"{container_dir(name)}/entrypoint.sh", f.file(f"{container_dir(name)}/entrypoint.sh"),
                           render_template("entrypoint.sh.j2", name=name, config_dir=IN_CONTAINER_DIR, sshd_dir=SSHD_DIR).encode(),
                           mode="0755")
        restart_record = pending.container_restart(name)
        restart_pending = pending.is_pending(f, restart_record)
        if entry.needed:
            # a running container runs the old entrypoint until it restarts: recorded before the write
            actions.append(pending.file_action_then_restart(
                entry, restart_record, f"{entry.path} was written; container {name} has not restarted since",
                restart_pending) if name in f.containers else file_action(entry))
        then_clear = (lambda act: pending.restart_and_clear(act, restart_record)) if restart_pending or (
            entry.needed and name in f.containers) else (lambda act: act)
        if not f.docker_running:  # an earlier step of this dry run installs or starts it
            c.containers_to_come.add(name)
            actions.append(Action(f"pull {spec.image} and run container {name} once Docker runs", lambda c: None))
            continue
        doc = resolved_spec(c, spec)
        current = f.containers.get(name)
        old_doc = jsonlib.loads(((current.get("Config") or {}).get("Labels") or {}).get(SPEC_LABEL) or "{}") \
            if current is not None else {}
        differences = spec_differences(old_doc, doc) + writable_tool_folder(current) if current is not None else []
        # CUDA against the driver and the GPUs: before a container is made (or its image pulled), never for
        # one that runs as specified (refusing it would stop this host's other containers for nothing)
        made = current is None or bool(differences) or spec.image not in f.images
        warning = "; ".join(w for w in (cuda_check(c, spec), arch_check(c, spec)) if w) if made else ""
        if spec.image not in f.images:
            actions.append(Action(f"pull {spec.image}", lambda c, i=spec.image: c.run(["docker", "pull", "--", i], sudo=True, kind="install"),
                                  warning=warning))
        if current is None:
            c.containers_to_come.add(name)
            why = gpus_in_words(c, spec)
            actions.append(Action(f"run container {name} ({why}, shm {doc['shm_size']}, ssh port {spec.ssh_port})",
                                  then_clear(lambda c, n=name, d=doc: docker_run(c, n, d))))
            continue
        if differences:
            c.containers_to_come.add(name)
            actions.append(Action(f"re-create container {name} ({'; '.join(differences)}{gpus_note(c, doc)}), keeping its volumes "
                                  "(snapshot first if you changed its files)",
                                  then_clear(lambda c, n=name, d=doc: recreate(c, n, d)),
                                  diff="".join(f"~ {d}\n" for d in differences)))
        elif not current["State"]["Running"]:
            c.containers_to_come.add(name)
            actions.append(Action(f"start container {name}",
                                  then_clear(lambda c, n=name: c.run(["docker", "start", n], sudo=True))))
        elif entry.needed or restart_pending:
            why = "its new entrypoint" if entry.needed else \
                "the entrypoint an earlier run wrote (that run was cut off before the restart)"
            actions.append(Action(f"restart container {name} to use {why}",
                                  then_clear(lambda c, n=name: c.run(["docker", "restart", n], sudo=True)),
                                  warning=f"processes in {name} are restarted"))
        else:
            fine.append(name + gpus_note(c, doc, " "))
    if c.host.containers and f.docker_running:
        record = gpu_record_action(c)
        if record:
            actions.append(record)
    if not actions:
        return Plan.ok(f"container(s) {', '.join(fine)} running as specified")
    return Plan.change(*actions)


def gpus_note(c, doc: dict, sep: str = "; ") -> str:
    """Which physical GPUs a container of a GPU list or count gets (index, model, UUID), for the plan."""
    if not isinstance(doc["gpus"], list):
        return ""
    return f"{sep}on {gpu_assign.describe(doc['gpus'], gpu_devices(c.facts()))}"


def snapshot_repository(name: str) -> str:
    """The image repository of `name`'s snapshots: NAME-snapshot.  Repositories are lower case, so a
    name with upper-case letters also gets a short hash of itself (`Dev` and `dev` keep apart), while
    a lower-case name keeps the repository its earlier snapshots have."""
    if name == name.lower():
        return f"{name}-snapshot"
    return f"{name.lower()}-{hashlib.sha256(name.encode()).hexdigest()[:8]}-snapshot"


def snapshot_tag(now: float, unique: str) -> str:
    """A new snapshot's tag: its UTC time and a suffix of its own (two snapshots in one second differ)."""
    return time.strftime("%Y%m%d-%H%M%SZ", time.gmtime(now)) + f"-{unique}"


def oldest_first(snapshots: list[dict]) -> list[dict]:
    """Snapshots (facts.parse_snapshots) ordered by the image's creation time on the server, the tag
    only breaking ties within one second."""
    return sorted(snapshots, key=lambda s: (s.get("Created", 0), s.get("Tag", "")))


def snapshots_to_prune(snapshots: list[dict], keep: int, newest: str | None = None) -> list[str]:
    """The snapshots (REPOSITORY:TAG) older than the newest `keep`; keep = 0 keeps them all.  `newest`,
    the one just taken, counts as the newest whatever the clock said."""
    ordered = [f"{s['Repository']}:{s['Tag']}" for s in oldest_first(snapshots)]
    if newest in ordered:
        ordered.remove(newest)
        ordered.append(newest)
    return ordered[:-keep] if keep and len(ordered) > keep else []


def snapshot(c, name: str, pause: bool = True) -> str:
    """`docker commit` the container to NAME-snapshot:TIMESTAMP (UTC, with a unique suffix; volumes are not
    in it), then remove all but its newest `keep_snapshots` snapshots (0 keeps them all); says what it did."""
    repository = snapshot_repository(name)
    tag = f"{repository}:{snapshot_tag(time.time(), secrets.token_hex(3))}"
    argv = ["docker", "commit", "--change", f"LABEL {SNAPSHOT_LABEL}={name}"]
    if not pause:
        argv.append("--pause=false")
    # the server's clock just before the commit, kept in the image (out of the container's reach), so
    # that `rm` can tell later changes from saved ones by their ctimes
    c.run(Script(f't=$(date +%s.%N) && exec {shlex.join(argv)} --change "LABEL {SNAPSHOT_STARTED_LABEL}=$t" '
                 f"{shlex.join([name, tag])}"), sudo=True, kind="install")
    keep = c.host.containers[name].keep_snapshots
    listing = parse_snapshots(c.run(["docker", "image", "ls", "--format", "{{json .}}", repository],
                                    sudo=True).stdout)
    # a snapshot a container still runs from cannot be removed; it stays, and is tried again next time
    removed = [t for t in snapshots_to_prune(listing, keep, newest=tag)
               if c.run(["docker", "rmi", t], sudo=True, check=False).ok]
    return tag + (f"; removed old {', '.join(removed)} (keep_snapshots = {keep})" if removed else "")


def recreate(c, name: str, doc: dict) -> str:
    """Stop it, snapshot it (if the user changed its files), run the new container, then remove the old;
    roll back on failure. Says whether it took a snapshot. The changes are read once it has stopped, so
    that nothing written before the stop escapes the decision."""
    c.run(["docker", "stop", name], sudo=True)
    try:
        changes = read_user_changes(c, name)
        if changes:
            shown = ", ".join(change.split(" ", 1)[1] for change in changes[:3]) + (", …" if len(changes) > 3 else "")
            note = f"{len(changes)} change(s) of yours ({shown}): snapshot {snapshot(c, name)}"
        else:
            note = "no changes of yours in it, so no snapshot"
    except Exception:
        c.run(["docker", "start", name], sudo=True, check=False)
        raise
    old = f"{name}-replaced-{int(time.time())}"
    c.run(["docker", "rename", name, old], sudo=True)
    result = docker_run(c, name, doc, check=False)
    if result.exit_code != 0:
        c.run(Script(f"docker rm -f {shlex.quote(name)} 2>/dev/null; docker rename {shlex.quote(old)} "
                     f"{shlex.quote(name)} && docker start {shlex.quote(name)}"), sudo=True, check=False)
        raise FleetError(f"re-creating {name} failed, the old container is back: {result.stderr.strip()[-300:]}")
    c.run(["docker", "rm", old], sudo=True)
    return note


def recreate_from(c, name: str, image: str) -> str | None:
    """Re-create `name` from a snapshot image, with the inventory's volumes and ports."""
    doc = dict(resolved_spec(c, c.host.containers[name]), restored_from=image)
    if name in c.facts().containers:
        return recreate(c, name, doc)
    docker_run(c, name, doc)
    return None


# --- containers.sshd ---

def plan_sshd(c) -> Plan:
    f = c.facts()
    if not c.host.containers:
        return Plan.ok("no containers")
    actions, fine = c.once_running(lambda name: "set up sshd"), []
    for name, inside in c.running_containers():
        before = len(actions)
        alias = c.inventory.container_alias(c.host.name, name)
        if not inside.sshd_installed:
            if not c.dry_run:
                raise FleetError(f"openssh-server is not installed in {name} (inside.tools installs it)")
            actions.append(Action(f"set up sshd in {name} once openssh-server is installed", lambda c: None))
            continue
        key_pub = f.file(f"{container_dir(name)}/ssh_host_ed25519_key.pub")
        if not key_pub.exists or key_pub is LINK:
            actions.append(Action(f"generate {name}'s SSH host key on the server (kept across re-creation) "
                                  f"and pin it as {alias}", lambda c, n=name, a=alias: generate_host_key(c, n, a)))
        config = FileChange(f"{container_dir(name)}/sshd_config", f.file(f"{container_dir(name)}/sshd_config"),
                            render_template("sshd_config.j2", name=name, config_dir=IN_CONTAINER_DIR).encode(),
                            validate=sshd_validator(name))
        reload_record = pending.sshd_reload(name)
        reload_pending = pending.is_pending(f, reload_record)
        if config.needed:
            actions.append(pending.file_action_then_restart(
                config, reload_record, f"{config.path} was written; sshd in {name} has not re-read it since",
                reload_pending) if config.content_changed else file_action(config))
        if not inside.sshd_running or config.content_changed or reload_pending:
            what = f"start sshd in {name}" if not inside.sshd_running else f"reload sshd in {name}"
            if reload_pending and not config.content_changed:
                what += " (an earlier run wrote its sshd_config and was cut off before the reload)"
            actions.append(Action(what, pending.restart_and_clear(lambda c, n=name: start_sshd(c, n), reload_record)))
        parts = key_pub.text.split()
        if key_pub.exists and key_pub is not LINK and len(parts) >= 2 and c.known_hosts is not None \
                and c.known_hosts.get(alias) != [(parts[0], parts[1])]:
            actions.append(Action(f"pin {alias}'s host key in {c.inventory.local.known_hosts}",
                                  lambda c, a=alias, p=parts: c.known_hosts.replace(a, [(p[0], p[1])])))
        if len(actions) == before:
            fine.append(name)
    if not actions:
        return Plan.ok(f"sshd running with the managed config in {', '.join(fine)}")
    return Plan.change(*actions)


# sshd refuses a privilege-separation folder that is not root's and 0755 ("must be owned by root and not group
# or world-writable"): `docker exec` hands down whatever umask the engine's runtime has, and an earlier run or
# the image may have left the folder with another mode
SSHD_DIR = "mkdir -p /run/sshd && chown 0:0 /run/sshd && chmod 0755 /run/sshd"


def sshd_validator(name: str):
    """`sshd -t` of a new sshd_config by the container's own sshd (the file is on the host, mounted in it),
    run as every command the tool runs in a container: as root, umask 022."""
    def argv(temp: str) -> list[str]:
        return in_container(name, ["sh", "-c", f'{SSHD_DIR} && exec /usr/sbin/sshd -t -f "$0"',
                                   temp.replace(container_dir(name), IN_CONTAINER_DIR)])
    return argv


def start_sshd(c, name: str) -> None:
    """Start sshd (or make it re-read its config) in a running container."""
    d = IN_CONTAINER_DIR
    script = (f"{SSHD_DIR} && if [ -s /run/sshd.pid ] && kill -0 $(cat /run/sshd.pid) 2>/dev/null; "
              f"then kill -HUP $(cat /run/sshd.pid); else /usr/sbin/sshd -f {d}/sshd_config; fi")
    c.run(in_container(name, Script(script)), sudo=True)


def host_key_script(name: str) -> Script:
    """Generates the container's host key with the server's ssh-keygen in a folder of the server's own,
    prints its public half from there, and renames both into the container's folder (replacing whatever
    has those names, a link too)."""
    q = shlex.quote
    key = q(f"{container_dir(name)}/ssh_host_ed25519_key")
    return Script("\n".join([
        "set -e",
        "command -v ssh-keygen >/dev/null || { echo 'ssh-keygen is not installed on the server "
        "(apt-get install openssh-client)' >&2; exit 1; }",
        f"t=$(mktemp -d {q(CONTAINER_DIR + '/.keygen.XXXXXX')})", "trap 'rm -rf \"$t\"' EXIT",
        f"ssh-keygen -q -t ed25519 -N '' -C {q(name)} -f \"$t/key\"",
        "cat \"$t/key.pub\"",
        f"mv -f -T -- \"$t/key\" {key}", f"mv -f -T -- \"$t/key.pub\" {key}.pub",
    ]))


def generate_host_key(c, name: str, alias: str) -> None:
    pub = c.run(host_key_script(name), sudo=True).stdout.split()
    if c.known_hosts is not None:
        c.known_hosts.replace(alias, [(pub[0], pub[1])])


RUN = Step("containers.run", plan_run)
SSHD = Step("containers.sshd", tracks_tool_writes(plan_sshd))
# apt's mirror and proxy come before the first apt run in a container, and everything it needs
# (openssh-server and the tools) is one apt transaction
UP = [RUN, inside.APT_MIRROR, inside.TOOLS, SSHD]


@task(help=HOST_TASK_HELP)
@fleet_task()
def up(c, dry_run=False, json=None):
    """Pull the images and run the inventory's containers with sshd, the apt mirror and the tools inside."""
    c.run_steps(UP)


ns = Collection("containers", up)
