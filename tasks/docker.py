"""Docker on the host: install, run as a service, daemon.json, the docker group."""
from __future__ import annotations

import json as jsonlib
import shlex

from invoke import Collection, task

from gpufleet import apt_policy, apt_repo, containerd_config, daemon_json, osinfo, pending, progress
from gpufleet.apt_repo import apt_install
from gpufleet.errors import FleetError
from gpufleet.fleet import fleet_task
from gpufleet.files import FileChange, apply_file
from gpufleet.paths import DAEMON_JSON, DAEMON_JSON_KEYS
from gpufleet.plan import Action, Plan, Step
from gpufleet.remote import Script
from . import HOST_TASK_HELP
from .apt import PROXY

DISTRO_PACKAGES = ("docker.io",)
CE_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io")
CE_PLUGINS = ("docker-buildx-plugin", "docker-compose-plugin")
# Docker's install guide removes these before installing docker-ce
CE_CONFLICTS = ("docker.io", "docker-doc", "docker-compose", "podman-docker", "containerd", "runc")
NVIDIA_RUNTIME = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
SNAPSHOTTER_FEATURE = "containerd-snapshotter"

SERVICE_START = "if [ -d /run/systemd/system ]; then systemctl enable --now docker; else service docker start; fi"
# sysv `restart` does not wait for the old dockerd to exit, so its `start` can see it and do nothing
SERVICE_RESTART = ("if [ -d /run/systemd/system ]; then systemctl reset-failed docker docker.socket 2>/dev/null; "
                   "systemctl restart docker; else service docker stop; i=0; "
                   "while pidof dockerd >/dev/null && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.2; done; "
                   "service docker start; fi")
SERVICE_STOP = ("if [ -d /run/systemd/system ]; then systemctl stop docker.socket docker; "
                "else service docker stop; i=0; while pidof dockerd >/dev/null && [ $i -lt 100 ]; do "
                "i=$((i+1)); sleep 0.2; done; fi")
WAIT_FOR_DOCKER = ("i=0; until docker info >/dev/null 2>&1; do i=$((i+1)); "
                   "if [ $i -gt 120 ]; then docker info; exit 1; fi; sleep 0.5; done")
DOCKER_LOG = ("if [ -d /run/systemd/system ]; then journalctl -u docker --no-pager -n 40 -o cat; "
              "else tail -n 40 /var/log/docker.log; fi")


def check_os(facts) -> None:
    reason = osinfo.check_supported(facts.os)
    if reason:
        raise FleetError(f"unsupported system: {reason}")


# --- docker.install ---

def plan_install(c) -> Plan:
    f = c.facts()
    check_os(f)
    source = c.host.docker_source
    installed = f.packages
    if source == "distro":
        if "docker-ce" in installed:
            raise FleetError("docker-ce is installed but docker_source = 'distro'; switching engines would "
                             "restart every container: set docker_source = 'docker-ce' or remove docker-ce yourself")
        if "docker.io" in installed:
            return Plan.ok(f"docker.io {installed['docker.io']} is installed")
        return Plan.change(Action("install docker.io from the OS archive",
                                  lambda c: c.run(apt_install(DISTRO_PACKAGES), sudo=True, kind="install")))
    if "docker.io" in installed:
        raise FleetError("docker.io is installed but docker_source = 'docker-ce'; switching engines would "
                         "restart every container: set docker_source = 'distro' or remove docker.io yourself")
    repo = apt_repo.docker_ce_repo(c.host.docker_mirror, c.host.docker_key_fingerprint, f.os.family,
                                   f.os.base_codename, f.arch)
    packages = CE_PACKAGES + (CE_PLUGINS if c.host.docker_plugins else ())
    why = docker_ce_choice(f, repo)
    actions = apt_repo.plan_repo_packages(repo, f, packages, conflicts=CE_CONFLICTS, why=why)
    if not actions:
        end = osinfo.docker_ce_end(f.os)
        return Plan.ok(f"docker-ce {installed['docker-ce']} is installed from {c.host.docker_mirror}"
                       + (f" ({end})" if end else ""))
    return Plan.change(*actions)


def docker_ce_choice(facts, repo) -> str:
    """Which docker-ce a release that Docker's repository stopped building for gets, and why ("" elsewhere);
    the version is apt's candidate where apt already reads the repository."""
    end = osinfo.docker_ce_end(facts.os)
    if not end:
        return ""
    policy = apt_policy.parse_policy(facts.docker_ce_policy)
    if policy.candidate and any(repo.names(uri) for uri in policy.served_by(policy.candidate)):
        return f"docker-ce {policy.candidate}, the newest its repository has for this release: {end}"
    return f"the newest docker-ce its repository has for this release: {end}"


# --- docker.service ---

def plan_service(c) -> Plan:
    f = c.facts()
    if not ({"docker.io", "docker-ce"} & set(f.packages)):
        if c.dry_run and not f.systemd:  # without systemd, nothing starts the engine docker.install installs
            return Plan.change(Action("start Docker: service docker start (no systemd) once it is installed",
                                      lambda c: None))
        return Plan.skipped("Docker is not installed yet")
    if f.docker_running:
        if f.systemd and f.docker_enabled not in ("enabled", "static"):
            return Plan.change(Action("enable docker at boot",
                                      lambda c: c.run(["systemctl", "enable", "docker"], sudo=True)))
        how = "systemd" if f.systemd else "service (no systemd)"
        return Plan.ok(f"Docker {f.docker_info.get('ServerVersion', '?')} is running ({how})")
    how = "systemctl enable --now docker" if f.systemd else "service docker start (no systemd)"
    return Plan.change(Action(f"start Docker: {how}", start_docker))


def start_docker(c) -> None:
    c.run(Script(f"{SERVICE_START}\n{WAIT_FOR_DOCKER}"), sudo=True)
    pending.clear(c.session, pending.DOCKER_RESTART)  # a start reads daemon.json as a restart would


# --- docker.configure (daemon.json) ---

def wanted_daemon_keys(c) -> dict:
    """The daemon.json keys this tool owns on this host."""
    f = c.facts()
    wanted = dict(c.host.daemon_json)
    if c.host.data_root:
        wanted["data-root"] = c.host.data_root
    if c.host.registry_mirrors:
        wanted["registry-mirrors"] = list(c.host.registry_mirrors)
    if c.host.image_store:
        features = wanted.get("features") if isinstance(wanted.get("features"), dict) else {}
        wanted["features"] = {**features, SNAPSHOTTER_FEATURE: c.host.image_store == "containerd"}
    if "nvidia-container-toolkit" in f.packages:  # also without a visible GPU (nvidia_toolkit = "always")
        wanted["runtimes"] = NVIDIA_RUNTIME
    return wanted


def plan_configure(c) -> Plan:
    """Merge the inventory's keys in and remove the ones the tool set earlier that the inventory dropped.

    The keys the tool set are recorded on the host (DAEMON_JSON_KEYS). A key it owns is set back when
    edited by hand and removed, whatever its value, once the inventory no longer lists it; a key it
    never set (by hand, by another tool, or by gpufleet before it kept the record) is never touched.
    """
    f = c.facts()
    if not f.docker_running and not c.dry_run:
        return Plan.skipped("Docker is not running yet")
    current_file = f.file(DAEMON_JSON)
    current = daemon_json.parse(current_file.text, DAEMON_JSON) if current_file.exists else {}
    record_file = f.file(DAEMON_JSON_KEYS)
    owned_before = daemon_json.parse_owned(record_file.text, DAEMON_JSON_KEYS) if record_file.exists else []
    wanted = wanted_daemon_keys(c)
    owned_now = daemon_json.owned_keys(wanted)
    new = daemon_json.merge(current, wanted, owned_before)
    record = FileChange(DAEMON_JSON_KEYS, record_file, daemon_json.render_owned(owned_now).encode())
    names = ", ".join(".".join(p) for p in owned_now) or "none"
    record_action = None
    if record.needed and (record_file.exists or owned_now):
        record_action = Action(f"record the daemon.json keys gpufleet sets ({names}) in {DAEMON_JSON_KEYS}",
                               lambda c: apply_file(c.session, record), diff=record.diff())
    if new == current:
        unapplied = unapplied_daemon_json(f, current)
        if unapplied:
            return Plan.change(Action(f"restart Docker to apply {DAEMON_JSON} ({unapplied})",
                                      lambda c: restart_docker(c, current_file, current)), record_action)
        if record_action:
            return Plan.change(record_action)
        if not wanted:
            return Plan.ok("no daemon.json keys set in the inventory")
        return Plan.ok(f"{DAEMON_JSON} already has these keys ({', '.join(wanted)})")
    problems = daemon_json.check_schema(new)
    if problems:
        raise FleetError(f"{DAEMON_JSON} would be invalid: {'; '.join(problems)}")
    content = daemon_json.render(new).encode()
    change = FileChange(DAEMON_JSON, current_file, content, validate=dockerd_validator(f))
    was_pending = pending.is_pending(f, pending.DOCKER_RESTART)
    diff = "\n".join(daemon_json.key_changes(current, new)) + "\n"
    set_keys, removed_keys = daemon_json.changed_keys(current, new)
    what = ", ".join(set_keys) + ("; " if set_keys and removed_keys else "") + \
        (f"remove {', '.join(removed_keys)}" if removed_keys else "")
    if not f.docker_running:  # an earlier step of this dry run installs or starts it
        return Plan.change(Action(f"update {DAEMON_JSON} ({what}) and restart Docker once it runs", lambda c: None,
                                  diff=diff), record_action)
    old_root = f.docker_info.get("DockerRootDir", "/var/lib/docker")
    new_root = new.get("data-root", "/var/lib/docker")
    warning = ""
    running = f.docker_info.get("ContainersRunning", 0)
    if running and not new.get("live-restore"):
        warning = f"restarting Docker stops {running} running container(s) (live-restore is off); restart policies bring them back"
    store_now, store_new = f.image_store.kind, wanted_store(new)
    if store_new and store_new != store_now:
        if store_new == "containerd" and docker_major(f) < 24:
            raise FleetError(f"image_store = 'containerd' needs Docker 24 or newer; this host runs "
                             f"{f.docker_info.get('ServerVersion')} (nothing was changed)")
        images, containers = f.docker_info.get("Images", 0), f.docker_info.get("Containers", 0)
        if images or containers:
            hidden = (f"{images} image(s) and {containers} container(s) stay in the {store_now} store, not copied: "
                      f"images in one store are invisible in the other")
            if not c.host.allow_data_root_migration:
                raise FleetError(f"image store change {store_now} -> {store_new}: {hidden}; set "
                                 f"allow_data_root_migration = true to switch anyway (nothing was changed)")
            if new_root.rstrip("/") != old_root.rstrip("/"):
                raise FleetError("data_root and image_store both change on a host with images: change one, "
                                 "run, then the other (nothing was changed)")
            warning = "; ".join(filter(None, [warning, f"{hidden} (image_store = '{store_now}' shows them again)"]))
    if new_root.rstrip("/") != old_root.rstrip("/"):
        images, containers = f.docker_info.get("Images", 0), f.docker_info.get("Containers", 0)
        if images or containers:
            if not c.host.allow_data_root_migration:
                raise FleetError(
                    f"data-root change {old_root} -> {new_root} would hide {images} image(s) and {containers} "
                    f"container(s); set allow_data_root_migration = true to copy them over (nothing was changed)")
            return Plan.change(Action(f"move Docker's data from {old_root} to {new_root}, update {DAEMON_JSON} "
                                      f"({what}), restart Docker",
                                      lambda c: migrate_data_root(c, change, old_root, new_root, was_pending),
                                      diff=diff, warning=warning), record_action)
    return Plan.change(Action(f"update {DAEMON_JSON} ({what}) and restart Docker",
                              lambda c: install_daemon_json(c, change, was_pending), diff=diff, warning=warning),
                       record_action)


def wanted_store(config: dict) -> str:
    """Pure: the image store daemon.json asks for ("containerd", "classic"), or "" (the engine's own)."""
    features = config.get("features")
    if not isinstance(features, dict) or not isinstance(features.get(SNAPSHOTTER_FEATURE), bool):
        return ""
    return "containerd" if features[SNAPSHOTTER_FEATURE] else "classic"


def docker_major(facts) -> int:
    version = (facts.docker_info or {}).get("ServerVersion", "0")
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def dockerd_validator(facts):
    """`dockerd --validate` exists from Docker 23; older engines get our JSON and schema check only."""
    if docker_major(facts) >= 23:
        return lambda path: ["dockerd", "--validate", "--config-file", path]
    return None


def unapplied_daemon_json(facts, config: dict) -> str:
    """Why the running Docker has not applied daemon.json as it is, or "".

    A pending-restart record says so for every key: it is written before daemon.json and removed
    after the restart.  The mirrors and runtimes the running daemon reports are compared too, which
    also catches a file written without the record (by hand, by an older gpufleet); data-root and the
    image store are not, as a restart onto another data root or store is the migration's to decide."""
    if pending.is_pending(facts, pending.DOCKER_RESTART):
        return "an earlier run wrote it and was cut off before the restart"
    problems = [p for p in docker_info_differences(facts.docker_info or {}, config)
                if "data root" not in p and "image store" not in p]
    return "the running Docker differs: " + "; ".join(problems) if problems else ""


def write_daemon_json(session, change: FileChange, was_pending: bool = False) -> None:
    """Write daemon.json, after recording on the host that Docker must restart to apply it."""
    pending.write_then_restart(session, change, pending.DOCKER_RESTART,
                               f"{DAEMON_JSON} was written; Docker has not restarted since", was_pending)


def install_daemon_json(c, change: FileChange, was_pending: bool = False) -> None:
    """Write daemon.json, restart Docker, and put the old file back if Docker does not come up."""
    write_daemon_json(c.session, change, was_pending)
    restart_docker(c, change.current, daemon_json.parse(change.content.decode(), DAEMON_JSON))


def restart_docker(c, previous, config: dict) -> None:
    """Restart Docker onto daemon.json (`config`) and clear the pending restart; if Docker does not
    come up, put the backup of `previous` (what the last write replaced) back and start it again."""
    result = c.run(Script(f"{SERVICE_RESTART}\n{WAIT_FOR_DOCKER}"), sudo=True, check=False)
    if result.exit_code != 0:
        docker_error = c.run(Script(DOCKER_LOG), sudo=True, check=False).stdout.strip()
        backup = f"{DAEMON_JSON}.gpufleet.bak"
        restore = (f"if [ -e {backup} ]; then mv -f {backup} {DAEMON_JSON}; fi" if previous.exists
                   else f"rm -f {DAEMON_JSON}")
        back = c.run(Script(f"{restore}\n{SERVICE_RESTART}\n{WAIT_FOR_DOCKER}"), sudo=True, check=False)
        if back.exit_code == 0:  # Docker runs the file on disk again: nothing waits for a restart
            pending.clear(c.session, pending.DOCKER_RESTART)
        state = "the previous daemon.json was restored and Docker runs again" if back.exit_code == 0 else \
            "restoring the previous daemon.json did not bring Docker back either"
        lines = docker_error.splitlines()
        errors = [l for l in lines if "failed to start daemon" in l.lower() or "level=fatal" in l or "level=error" in l]
        last = " | ".join((errors or lines)[-2:])
        raise FleetError(f"Docker did not start with the new {DAEMON_JSON}; {state}. Docker said: {last}")
    pending.clear(c.session, pending.DOCKER_RESTART)
    verify_docker_info(c, config)


def verify_docker_info(c, config: dict) -> None:
    info = jsonlib.loads(c.run(["docker", "info", "--format", "{{json .}}"], sudo=True).stdout)
    problems = docker_info_differences(info, config)
    if problems:
        raise FleetError("docker info after the restart: " + "; ".join(problems))


def docker_info_differences(info: dict, config: dict) -> list[str]:
    """Pure: what of `config` (daemon.json) the running daemon (`docker info`) does not show."""
    problems = []
    if "data-root" in config and info.get("DockerRootDir", "").rstrip("/") != config["data-root"].rstrip("/"):
        problems.append(f"data root is {info.get('DockerRootDir')}, not {config['data-root']}")
    store = wanted_store(config)
    if store and containerd_config.image_store(info).kind != store:
        problems.append(f"image store is {containerd_config.image_store(info).kind}, not {store}")
    mirrors = [m.rstrip("/") for m in (info.get("RegistryConfig") or {}).get("Mirrors") or []]
    for mirror in config.get("registry-mirrors", []):
        if mirror.rstrip("/") not in mirrors:
            problems.append(f"registry mirror {mirror} is not active (docker info lists {mirrors})")
    for runtime in config.get("runtimes", {}):
        if runtime not in (info.get("Runtimes") or {}):
            problems.append(f"runtime {runtime} is not registered")
    return problems


def copy_script(old_root: str, new_root: str, stop: str = SERVICE_STOP, skip: str = "") -> Script:
    """`stop` Docker and `cp -a` the data root (but its entry `skip`: containerd's root, which
    docker.containerd moves); while cp runs, `du -sm` of the target every 5 s says how far it got
    (lines that gpufleet.progress reads).  The same shell does it: no second connection or channel,
    and the poller ends with the script (its trap)."""
    q = shlex.quote
    start = progress.COPY_START.format(source="$source", target="$target", megabytes="$total")
    so_far = progress.COPY_DONE_SO_FAR.format(megabytes="$(du -sm -- \"$target\" 2>/dev/null | cut -f1)")
    return Script("\n".join([
        "set -e", stop,
        f"source={q(old_root)}; target={q(new_root)}",
        'mkdir -p -- "$target"',
        'total=$(du -sm -- "$source" | cut -f1)',
        f'echo "{start}"',
        f'( while sleep 5 >/dev/null 2>&1 </dev/null; do echo "{so_far}"; done ) &',
        "poller=$!",
        "trap 'kill \"$poller\" 2>/dev/null || :' EXIT",
        (f'find "$source" -mindepth 1 -maxdepth 1 ! -name {q(skip)} -exec cp -a -t "$target/" -- {{}} +' if skip
         else 'cp -a -- "$source/." "$target/"'),
    ]))


def containerd_root_inside(f, docker_root: str) -> str:
    """The name of the entry of `docker_root` that is the system containerd's root, or "" (none there)."""
    store = f.image_store
    inner = f.containerd_root.rstrip("/")
    if not (store and store.system_containerd and inner.startswith(docker_root.rstrip("/") + "/")):
        return ""
    rest = inner[len(docker_root.rstrip("/")) + 1:]
    return "" if "/" in rest else rest


def migrate_data_root(c, change: FileChange, old_root: str, new_root: str, was_pending: bool = False) -> None:
    """Stop Docker, copy the data root (owners, hard links, xattrs kept; not containerd's root inside
    it, which docker.containerd moves), switch, check the images."""
    q = shlex.quote
    c.run(Script(f"if [ -d {q(new_root)} ] && [ -n \"$(ls -A -- {q(new_root)})\" ]; then "
                 f"echo {q(new_root + ' is not empty; not copying over it')} >&2; exit 1; fi"), sudo=True)
    before = c.run(["docker", "image", "ls", "-q", "--no-trunc"], sudo=True).stdout.split()
    skip = containerd_root_inside(c.facts(), old_root)
    copied = c.run(copy_script(old_root, new_root, skip=skip), sudo=True, check=False, kind="copy")
    if copied.exit_code != 0:
        c.run(Script(f"{SERVICE_START}\n{WAIT_FOR_DOCKER}"), sudo=True, check=False)
        raise FleetError(f"copying {old_root} to {new_root} failed ({copied.stderr.strip()[-200:]}); "
                         f"Docker was started again on {old_root}")
    install_daemon_json(c, change, was_pending)
    after = c.run(["docker", "image", "ls", "-q", "--no-trunc"], sudo=True).stdout.split()
    if sorted(before) != sorted(after):
        raise FleetError(f"after moving the data root, images differ: before {len(before)}, after {len(after)}; "
                         f"the old data is untouched in {old_root}")


# --- docker.containerd (containerd's root, where the containerd image store keeps the images) ---

CONTAINERD_CONFIG = containerd_config.CONTAINERD_CONFIG
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CONTAINERD_STOP = ("if [ -d /run/systemd/system ]; then systemctl stop containerd; else service containerd stop; i=0; "
                   "while pidof containerd >/dev/null && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.2; done; fi")
CONTAINERD_START = "if [ -d /run/systemd/system ]; then systemctl start containerd; else service containerd start; fi"
CONTAINERD_LOG = ("if [ -d /run/systemd/system ]; then journalctl -u containerd --no-pager -n 20 -o cat; "
                  "else tail -n 20 /var/log/containerd.log 2>/dev/null; fi")


def wait_for_containerd(address: str) -> str:
    q = shlex.quote(address)
    return (f"i=0; until ctr --address {q} version >/dev/null 2>&1; do i=$((i+1)); "
            f"if [ $i -gt 120 ]; then ctr --address {q} version; exit 1; fi; sleep 0.5; done")


def wanted_containerd_root(c) -> str | None:
    """Where containerd's root goes: inside data_root, so that the big disk holds the images."""
    return f"{c.host.data_root}/containerd" if c.host.data_root else None


def plan_containerd(c) -> Plan:
    """With the containerd image store and the system's containerd (docker-ce's packaging), move
    containerd's root into data_root: the `root` key of its config.toml, the one key the tool owns there."""
    f = c.facts()
    root = wanted_containerd_root(c)
    if not f.docker_running:
        if c.dry_run and root and c.host.image_store != "classic":  # an earlier step of this dry run starts it
            return Plan.change(Action(f"set containerd's root to {root} in {CONTAINERD_CONFIG} once Docker runs, "
                                      "where it uses the containerd image store", lambda c: None))
        return Plan.skipped("Docker is not running yet")
    store = f.image_store
    # the store the inventory picks is the engine's once docker.configure has run (in a dry run, not yet)
    if (c.host.image_store or store.kind) != "containerd":
        return Plan.ok(f"images are in Docker's classic store, under {f.docker_info.get('DockerRootDir')}")
    if not store.system_containerd:
        return Plan.ok(f"dockerd runs its own containerd: images are under {f.images_path}")
    current_file = f.file(CONTAINERD_CONFIG)
    text = current_file.text if current_file.exists else ""
    new_text = containerd_config.set_root(text, root, CONTAINERD_CONFIG)
    address = store.containerd_address or CONTAINERD_SOCKET
    was_pending = pending.is_pending(f, pending.CONTAINERD_RESTART)
    if new_text == text:
        if was_pending:
            return Plan.change(Action(f"restart containerd and Docker to apply {CONTAINERD_CONFIG} (an earlier run "
                                      "wrote it and was cut off before the restart)",
                                      lambda c: restart_containerd(c, current_file, address)))
        return Plan.ok(f"images are under {f.images_path} (containerd's root)")
    old_root = f.containerd_root or containerd_config.configured_root(text)
    new_root = containerd_config.configured_root(new_text)
    change = FileChange(CONTAINERD_CONFIG, current_file, new_text.encode(), mode=current_file.mode or "0644",
                        validate=lambda path: ["containerd", "--config", path, "config", "dump"])
    diff = change.diff()
    images, containers = f.docker_info.get("Images", 0), f.docker_info.get("Containers", 0)
    running = f.docker_info.get("ContainersRunning", 0)
    warning = f"restarting containerd and Docker stops {running} running container(s)" if running else ""
    if old_root.rstrip("/") != new_root.rstrip("/") and (images or containers):
        if not c.host.allow_data_root_migration:
            raise FleetError(
                f"containerd root change {old_root} -> {new_root} (the containerd image store) would hide {images} "
                f"image(s) and {containers} container(s); set allow_data_root_migration = true to copy them over "
                "(nothing was changed)")
        return Plan.change(Action(f"move containerd's data from {old_root} to {new_root}, update {CONTAINERD_CONFIG} "
                                  "(root), restart containerd and Docker",
                                  lambda c: migrate_containerd_root(c, change, old_root, new_root, address, was_pending),
                                  diff=diff, warning=warning))
    return Plan.change(Action(f"update {CONTAINERD_CONFIG} (root = {new_root}) and restart containerd and Docker",
                              lambda c: install_containerd_config(c, change, address, was_pending),
                              diff=diff, warning=warning))


def install_containerd_config(c, change: FileChange, address: str, was_pending: bool = False) -> None:
    """Write config.toml (after recording that containerd must restart), restart containerd and Docker."""
    pending.write_then_restart(c.session, change, pending.CONTAINERD_RESTART,
                               f"{CONTAINERD_CONFIG} was written; containerd has not restarted since", was_pending)
    restart_containerd(c, change.current, address)


def restart_containerd(c, previous, address: str) -> None:
    """Stop Docker, restart containerd onto its config.toml, start Docker; if containerd does not come up,
    put the backup of `previous` back and start both again."""
    up = f"{CONTAINERD_START}\n{wait_for_containerd(address)}\n{SERVICE_START}\n{WAIT_FOR_DOCKER}"
    result = c.run(Script(f"{SERVICE_STOP}\n{CONTAINERD_STOP}\n{up}"), sudo=True, check=False)
    if result.exit_code != 0:
        said = " | ".join(c.run(Script(CONTAINERD_LOG), sudo=True, check=False).stdout.strip().splitlines()[-2:])
        backup = f"{CONTAINERD_CONFIG}.gpufleet.bak"
        restore = (f"if [ -e {backup} ]; then mv -f {backup} {CONTAINERD_CONFIG}; fi" if previous.exists
                   else f"rm -f {CONTAINERD_CONFIG}")
        back = c.run(Script(f"{SERVICE_STOP}\n{CONTAINERD_STOP}\n{restore}\n{up}"), sudo=True, check=False)
        if back.exit_code == 0:
            pending.clear(c.session, pending.CONTAINERD_RESTART)
        state = ("the previous config.toml was restored and containerd and Docker run again" if back.exit_code == 0
                 else "restoring the previous config.toml did not bring them back either")
        raise FleetError(f"containerd or Docker did not start with the new {CONTAINERD_CONFIG}; {state}. "
                         f"containerd said: {said}")
    pending.clear(c.session, pending.CONTAINERD_RESTART)


def migrate_containerd_root(c, change: FileChange, old_root: str, new_root: str, address: str,
                            was_pending: bool = False) -> None:
    """Stop Docker and containerd, copy containerd's root (owners, hard links, xattrs kept), switch,
    check that Docker lists the same images."""
    q = shlex.quote
    c.run(Script(f"if [ -d {q(new_root)} ] && [ -n \"$(ls -A -- {q(new_root)})\" ]; then "
                 f"echo {q(new_root + ' is not empty; not copying over it')} >&2; exit 1; fi"), sudo=True)
    before = c.run(["docker", "image", "ls", "-q", "--no-trunc"], sudo=True).stdout.split()
    copied = c.run(copy_script(old_root, new_root, stop=f"{SERVICE_STOP}\n{CONTAINERD_STOP}"), sudo=True,
                   check=False, kind="copy")
    if copied.exit_code != 0:
        c.run(Script(f"{CONTAINERD_START}\n{wait_for_containerd(address)}\n{SERVICE_START}\n{WAIT_FOR_DOCKER}"),
              sudo=True, check=False)
        raise FleetError(f"copying {old_root} to {new_root} failed ({copied.stderr.strip()[-200:]}); "
                         f"containerd and Docker were started again on {old_root}")
    install_containerd_config(c, change, address, was_pending)
    after = c.run(["docker", "image", "ls", "-q", "--no-trunc"], sudo=True).stdout.split()
    if sorted(before) != sorted(after):
        raise FleetError(f"after moving containerd's root, images differ: before {len(before)}, after {len(after)}; "
                         f"the old data is untouched in {old_root}")


# --- docker.users ---

def plan_users(c) -> Plan:
    f = c.facts()
    users = c.host.docker_users
    if not users:
        return Plan.ok("no docker_users in the inventory")
    actions = []
    for user in users:
        groups = f.users.get(user)
        if groups is None:
            raise FleetError(f"docker_users: user {user!r} does not exist on this host")
        if "docker" not in groups:
            actions.append(Action(f"add {user} to the docker group", lambda c, u=user: add_to_docker_group(c, u)))
    return Plan.change(*actions) if actions else Plan.ok(f"{', '.join(users)} already in the docker group")


def add_to_docker_group(c, user: str) -> None:
    c.run(["usermod", "-aG", "docker", "--", user], sudo=True)
    if user == c.host.user:
        c.session.reconnect()  # group membership is read at login


INSTALL = Step("docker.install", plan_install)
SERVICE = Step("docker.service", plan_service)
CONFIGURE = Step("docker.configure", plan_configure)
CONTAINERD = Step("docker.containerd", plan_containerd)
USERS = Step("docker.users", plan_users)


@task(help=HOST_TASK_HELP)
@fleet_task()
def install(c, dry_run=False, json=None):
    """Install Docker (docker-ce from a mirror, or docker.io) and start it."""
    c.run_steps([PROXY, INSTALL, SERVICE])


@task(help=HOST_TASK_HELP)
@fleet_task()
def configure(c, dry_run=False, json=None):
    """Merge the inventory's keys into /etc/docker/daemon.json (and containerd's root into data_root); restart on change."""
    c.run_steps([CONFIGURE, CONTAINERD])


@task(help=HOST_TASK_HELP)
@fleet_task()
def users(c, dry_run=False, json=None):
    """Add the inventory's docker_users to the docker group (root-equivalent: see README)."""
    c.run_steps([USERS])


ns = Collection("docker", install, configure, users)
