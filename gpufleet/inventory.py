"""The inventory: `hosts.toml`, validated in full before any host is contacted.

Settings are layered built-in defaults < `[defaults]` < `[groups.NAME]` (in the
order a host lists its groups) < `[hosts.NAME]`; `show_host` reports which layer
each value came from.
"""
from __future__ import annotations

import difflib
import os
import pwd
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04's)
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from gpufleet.errors import InventoryError
from gpufleet.remote import MASK, Secret

INVENTORY_ENV = "FABRIC_INVENTORY"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SIZE_RE = re.compile(r"^[0-9]+[bkmgBKMG]?$")
# Every value below ends up in a command line, a file or an argv on a host: each pattern is what
# its target accepts, and none lets a value start with '-' (it would be read as an option).
# a login from a directory service (SSSD, AD) is NAME@REALM
USER_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,31}|[A-Za-z_][A-Za-z0-9_.-]{0,63}@[A-Za-z0-9]([A-Za-z0-9.-]{0,253}[A-Za-z0-9])?)$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")
ADDRESS_RE = re.compile(r"^([A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9])?|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*)$")
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?"
IMAGE_RE = re.compile(rf"^(?:{_IMAGE_DOMAIN}/)?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
                      rf"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{{32,}})?$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
# a host with this address is the machine fab runs on: its tasks run through a local session, not SSH
LOCAL_ADDRESS = "local"
# The published fingerprints of the keys that sign Docker's and NVIDIA's apt repositories (mirrors serve the same keys)
DOCKER_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
NVIDIA_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"


# --- value checkers: each returns the cleaned value or raises ValueError(reason) ---

def _str(v):
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {_tname(v)}")
    return v


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {_tname(v)}")
    return v


def _int_range(lo, hi):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {_tname(v)}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range {lo}..{hi}")
        return v
    return check


def _url(v, schemes=("http", "https")):
    _str(v)
    parts = urlsplit(v)
    if parts.scheme not in schemes or not parts.hostname or " " in v:
        raise ValueError(f"{v!r} is not a valid {'/'.join(schemes)} URL (like http://host:port)")
    # only the characters RFC 3986 lets a URL have: a `"` would end the quoted value in apt's files
    odd = re.search(r"[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]", v)
    if odd:
        raise ValueError(f"{v!r} has {odd.group()!r}, which a URL cannot have (write it %-encoded)")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{v!r} has an invalid port") from None
    return v.rstrip("/")


def _optional_url(v):
    return "" if v == "" else _url(v)


def _url_list(v):
    return [_url(x) for x in _list(v)]


def _list(v):
    if not isinstance(v, list):
        raise ValueError(f"expected a list, got {_tname(v)}")
    return v


def _str_list(v):
    return [_str(x) for x in _list(v)]


def _abs_path(v):
    _str(v)
    if v and not v.startswith("/"):
        raise ValueError(f"{v!r} is not an absolute path")
    return v.rstrip("/") or v


def _fingerprint(v):
    """An OpenPGP v4 fingerprint: 40 hex digits, spaces allowed (as `gpg --show-keys` prints it)."""
    _str(v)
    compact = v.replace(" ", "").upper()
    if not re.fullmatch(r"[0-9A-F]{40}", compact):
        raise ValueError(f"{v!r} is not a key fingerprint (40 hex digits, like {DOCKER_KEY_FINGERPRINT!r})")
    return compact


def _choice(*options):
    def check(v):
        if v not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return v
    return check


GPU_UUID_RE = re.compile(r"^(GPU|MIG)-[0-9A-Za-z/-]+$")


def _gpus(v):
    """"auto", "all", "none", a count (2), or a list of GPU indices ([0, 1]) or GPU/MIG UUIDs."""
    if isinstance(v, str):
        return _choice("auto", "all", "none")(v)
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ValueError(f"{v} is not a GPU count (1 or more; \"none\" for no GPU)")
        return v
    if isinstance(v, list) and v:
        for item in v:
            if isinstance(item, bool) or not isinstance(item, (int, str)) or (isinstance(item, int) and item < 0) \
                    or (isinstance(item, str) and not GPU_UUID_RE.match(item)):
                raise ValueError(f"{item!r} is not a GPU index (0, 1, ...) or a GPU/MIG UUID (GPU-..., MIG-...)")
        if len(set(map(str, v))) != len(v):
            raise ValueError(f"{v!r} names a GPU twice")
        return list(v)
    raise ValueError(f"expected \"auto\", \"all\", \"none\", a count or a list of GPU indices or UUIDs, "
                     f"got {_tname(v)}")


def _name(v):
    _str(v)
    if not NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a valid name (letters, digits, '_', '.', '-')")
    return v


def _matching(pattern: re.Pattern, what: str):
    def check(v):
        _str(v)
        if not pattern.match(v):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v
    return check


_user = _matching(USER_RE, "user name (letters, digits, '_', '.', '-', and @REALM; not starting with '-')")
_image = _matching(IMAGE_RE, "image reference (like pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime)")
_package = _matching(PACKAGE_RE, "package name (like git or python3-pip)")


NOFILE_MAX = 1073741816  # the kernel's ceiling for fs.nr_open
DEFAULT_NOFILE = "1048576:1048576"
TOOLKIT_VERSION_RE = re.compile(r"^([0-9][A-Za-z0-9.+~:-]*)?$")


def _nofile(v):
    """The open-files limit of a container: N (soft and hard) or "SOFT:HARD", normalised to "SOFT:HARD"."""
    if isinstance(v, int) and not isinstance(v, bool):
        soft = hard = v
    elif isinstance(v, str) and re.fullmatch(r"[0-9]+:[0-9]+", v):
        soft, hard = (int(x) for x in v.split(":"))
    else:
        raise ValueError(f"expected a number like 1048576 or \"SOFT:HARD\" like \"65536:1048576\", got {v!r}")
    if not 1024 <= soft <= hard <= NOFILE_MAX:
        raise ValueError(f"{v!r}: need 1024 <= soft <= hard <= {NOFILE_MAX} (sshd and DataLoader workers need files)")
    return f"{soft}:{hard}"


def _user_list(v):
    return [_user(x) for x in _list(v)]


def _name_list(v):
    return [_name(x) for x in _list(v)]


def _package_list(v):
    return [_package(x) for x in _list(v)]


def _env_table(v):
    """Container environment: KEY = "value", or KEY = { secret = "value" } / { from_env = "NAME" }
    for tokens and passwords (masked everywhere the tool prints or stores them)."""
    out = {}
    for key, value in _table(v).items():
        if not ENV_KEY_RE.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name (letters, digits, '_')")
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, dict) and list(value) == ["secret"] and isinstance(value["secret"], str):
            out[key] = Secret(value["secret"])
        elif isinstance(value, dict) and list(value) == ["from_env"] and isinstance(value["from_env"], str):
            name = value["from_env"]
            if name not in os.environ:
                raise ValueError(f"{key} = {{ from_env = {name!r} }} but {name} is not set in this environment")
            out[key] = Secret(os.environ[name])
        else:
            raise ValueError(f"value of {key!r} must be a string, {{ secret = \"...\" }} or {{ from_env = \"NAME\" }}")
    return out


def _table(v):
    if not isinstance(v, dict):
        raise ValueError(f"expected a table, got {_tname(v)}")
    return v


def _str_table(v):
    for k, x in _table(v).items():
        if not isinstance(x, str):
            raise ValueError(f"value of {k!r} must be a string, got {_tname(x)}")
    return dict(v)


def _tname(v):
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


# --- schema ---

HOST_SETTINGS: dict[str, tuple[Callable[[Any], Any], Any, str]] = {
    # key: (checker, built-in default, one-line help)
    "user": (_user, "root", "SSH user"),
    "port": (_int_range(1, 65535), 22, "SSH port"),
    "jump": (_name, None, "inventory name of the jump host (bastion) to go through"),
    "apt_proxy": (_optional_url, "", "apt proxy URL for the host and its containers"),
    "docker_source": (_choice("docker-ce", "distro"), "docker-ce", "docker-ce (Docker's repo or a mirror) or distro (docker.io)"),
    "docker_mirror": (_url, "https://download.docker.com/linux", "base URL of Docker's apt repo or a mirror of it"),
    "docker_plugins": (_bool, True, "with docker-ce, also docker-buildx-plugin and docker-compose-plugin"),
    "docker_key_fingerprint": (_fingerprint, DOCKER_KEY_FINGERPRINT, "fingerprint of the key that signs docker_mirror"),
    "data_root": (_abs_path, "", "Docker data-root; empty leaves Docker's default"),
    "allow_data_root_migration": (_bool, False, "copy existing images/containers when data_root changes"),
    "image_store": (_choice("classic", "containerd"), "",
                    "Docker's image store: classic or containerd; empty leaves the engine's own"),
    "registry_mirrors": (_url_list, [], "Docker Hub registry mirrors"),
    "daemon_json": (_table, {}, "extra daemon.json keys to set"),
    "nvidia_mirror": (_url, "https://nvidia.github.io/libnvidia-container", "base URL of NVIDIA's libnvidia-container repo or a mirror"),
    "nvidia_key_fingerprint": (_fingerprint, NVIDIA_KEY_FINGERPRINT, "fingerprint of the key that signs nvidia_mirror"),
    "nvidia_toolkit": (_choice("auto", "always", "never"), "auto",
                       "install the NVIDIA Container Toolkit: auto (where a GPU is visible), always, never"),
    "nvidia_toolkit_version": (_matching(TOOLKIT_VERSION_RE, "toolkit version (like 1.18.0 or 1.18.0-1)"), "",
                               "the one version of all the toolkit's packages; empty: the newest the mirror has"),
    "gpu_path": (_choice("auto", "runtime", "cdi"), "auto",
                 "how containers get GPUs: runtime (--runtime nvidia --gpus), cdi (--device nvidia.com/gpu=…), "
                 "auto (cdi with Docker 28.2+ and the toolkit 1.18+, else runtime)"),
    "docker_users": (_user_list, [], "users to add to the docker group"),
    "apt_mirror": (_optional_url, "", "apt mirror base URL used inside containers; empty = official archive"),
    "tools": (_package_list, ["git", "wget", "vim", "less", "openssh-client", "ca-certificates"], "packages installed in containers"),
    "git_name": (_str, "", "git user.name in containers"),
    "git_email": (_str, "", "git user.email in containers"),
    "github_access": (_choice("agent", "deploy-key", "none"), "agent", "GitHub access from containers"),
    "forward_user": (_user, "gpufleet-fwd", "the forwarding-only account gpufleet keeps on this host for the "
                                             "people of its containers (no shell, no password)"),
    "forward_agent": (_bool, True, "forward your ssh agent into this host's containers (root there can use it); "
                                   "by default only where github_access = 'agent'"),
    "containers": (_table, {}, "containers to run, by name"),
    "share_gpus": (_bool, False, "let containers of this host hold the same GPU"),
    # how long one remote command may run, by its class (gpufleet.remote.TIMEOUT_SETTINGS)
    "probe_timeout": (_int_range(1, 86400), 120, "seconds the fact probe may run"),
    "command_timeout": (_int_range(1, 86400), 600, "seconds any other remote command may run"),
    "install_timeout": (_int_range(1, 86400), 1800,
                        "seconds a package install, image pull, snapshot or ops.exec command may run"),
    "copy_timeout": (_int_range(1, 7 * 86400), 43200, "seconds the copy of a data-root move may run"),
    "ulimit_nofile": (_nofile, DEFAULT_NOFILE, "open files of this host's containers: N or \"SOFT:HARD\" "
                                               "(a container's own ulimit_nofile wins)"),
}
HOST_ONLY = {"address": _str, "groups": _str_list}

CONTAINER_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "image": (_image, None),
    "ssh_port": (_int_range(1, 65535), None),
    "volumes": (_str_list, []),
    "shm_size": (_str, ""),
    "gpus": (_gpus, "auto"),
    "share_gpus": (_bool, False),
    "env": (_env_table, {}),
    "restart": (_choice(*RESTART_POLICIES), "unless-stopped"),
    "allow_driver_mismatch": (_bool, False),
    "allow_arch_mismatch": (_bool, False),
    "keep_snapshots": (_int_range(0, 1000), 3),
    "users": (_name_list, []),
    "ulimit_nofile": (_nofile, DEFAULT_NOFILE),
}

PERSON_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "keys": (_str_list, None),
    "jump_user": (_str, ""),
    "identity": (_str, ""),
    "known_hosts": (_str, "~/.ssh/gpufleet_known_hosts"),
}

LOCAL_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "ssh_config": (_str, "~/.ssh/config"),
    "known_hosts": (_str, "~/.ssh/gpufleet_known_hosts"),
    "identity": (_str, ""),
    "public_keys": (_str_list, []),
    "revoked_keys": (_str_list, []),
    "container_alias": (_str, "{host}-{container}"),
    "vscode_settings": (_str, ""),
}

RUN_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "parallel": (_int_range(1, 1000), 20),
    "connect_timeout": (_int_range(1, 600), 15),
    "log_dir": (_str, ".gpufleet/logs"),
}

TOP_LEVEL = ("run", "local", "people", "defaults", "groups", "hosts")


@dataclass(frozen=True)
class Volume:
    host_path: str
    container_path: str
    mode: str = "rw"

    def __str__(self) -> str:
        return f"{self.host_path}:{self.container_path}" + (":ro" if self.mode == "ro" else "")


@dataclass(frozen=True)
class ContainerSpec:
    """One long-lived container on a host, as the inventory asks for it."""
    name: str
    image: str
    ssh_port: int
    volumes: tuple[Volume, ...] = ()
    shm_size: str = ""
    gpus: str | int | tuple = "auto"  # "auto", "all", "none", a count, or a tuple of indices / UUIDs
    share_gpus: bool = False
    env: tuple[tuple[str, str], ...] = ()  # a value that is a remote.Secret is masked everywhere
    restart: str = "unless-stopped"
    allow_driver_mismatch: bool = False
    allow_arch_mismatch: bool = False
    keep_snapshots: int = 3
    users: tuple[str, ...] = ()  # names of [people.NAME] tables
    ulimit_nofile: str = DEFAULT_NOFILE  # "SOFT:HARD"


@dataclass(frozen=True)
class Person:
    """`[people.NAME]`: someone who uses containers; `keys` are key lines or .pub paths, read by sync-keys."""
    name: str
    keys: tuple[str, ...]
    jump_user: str  # their own login on the jump hosts (the bastion is theirs, not the tool's)
    identity: str
    known_hosts: str


@dataclass
class Host:
    """A host with its merged settings and where each came from."""
    name: str
    address: str
    groups: tuple[str, ...]
    settings: dict[str, Any]
    containers: dict[str, ContainerSpec]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def secrets(self) -> list[str]:
        """Values marked secret (container env): masked in everything the tool prints or stores."""
        return [value for spec in self.containers.values() for _, value in spec.env if isinstance(value, Secret)]

    @property
    def timeouts(self) -> dict[str, int]:
        """{command class: seconds} for this host's remote commands."""
        return {kind: self.settings[f"{kind}_timeout"] for kind in ("probe", "command", "install", "copy")}

    @property
    def is_local(self) -> bool:
        """`address = "local"`: this machine, reached without SSH."""
        return self.address == LOCAL_ADDRESS

    def __getattr__(self, key):
        settings = self.__dict__.get("settings", {})
        if key in settings:
            return settings[key]
        raise AttributeError(key)


@dataclass
class LocalSettings:
    """The workstation side: where the ssh config goes and which keys to distribute."""
    ssh_config: Path
    known_hosts: Path
    identity: Path | None
    public_keys: list[str]
    revoked_keys: list[str]
    container_alias: str
    vscode_settings: Path | None = None


@dataclass
class RunSettings:
    parallel: int
    connect_timeout: int
    log_dir: Path


@dataclass
class Inventory:
    path: Path
    hosts: dict[str, Host]
    local: LocalSettings
    run: RunSettings
    people: dict[str, Person] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        if name not in self.hosts:
            raise InventoryError(self.path, "hosts", f"unknown host {name!r}{_suggest(name, self.hosts)}")
        return self.hosts[name]

    def jump_chain(self, name: str) -> list[Host]:
        """The jump hosts to go through to reach `name`, outermost first."""
        chain = []
        jump = self.hosts[name].jump
        while jump:
            chain.insert(0, self.hosts[jump])
            jump = self.hosts[jump].jump
        return chain

    def container_alias(self, host: str, container: str) -> str:
        return self.local.container_alias.format(host=host, container=container)


def inventory_path(explicit: str | os.PathLike | None = None, project_dir: Path | None = None) -> Path:
    """`FABRIC_INVENTORY` if set, else `hosts.toml` beside the fabfile."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(INVENTORY_ENV)
    if env:
        return Path(env)
    return (project_dir or Path.cwd()) / "hosts.toml"


def load(path: str | os.PathLike) -> Inventory:
    """Read and validate an inventory; raises InventoryError on the first problem."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(path, "", f"inventory file not found (set {INVENTORY_ENV} or create it)") from None
    except OSError as e:
        raise InventoryError(path, "", f"cannot read inventory: {e.strerror}") from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InventoryError(path, "", f"not UTF-8 (byte {e.start})") from None
    return loads(text, path)


def loads(text: str, path: str | os.PathLike = "<inventory>") -> Inventory:
    """Validate inventory text; `path` is only used in messages."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = re.search(r"line (\d+)", str(e))
        raise InventoryError(path, "", f"TOML syntax error: {e}", int(line.group(1)) if line else None) from None
    return _Validator(path, text).build(data)


def _suggest(word: str, choices) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1) or [c for c in choices if c.startswith(word)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Validator:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    # Line lookup is best effort: tomllib gives no positions for valid documents.
    def line_of(self, table: str, key: str | None, exact: bool = False) -> int | None:
        header_re = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
        current = ""
        table_line = None
        for number, line in enumerate(self.lines, 1):
            m = header_re.match(line)
            if m:
                current = m.group(1).replace('"', "").replace(" ", "")
                if current == table:
                    table_line = number
                continue
            if key and current == table and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
                return number
        return None if exact else table_line

    def fail(self, table: str, key: str | None, message: str):
        dotted = f"{table}.{key}" if key and table else (key or table)
        # a key inside a value (an inline table, a list item) is found by the line of its outer key
        parts = re.sub(r"\[\d+\]$", "", dotted).split(".")
        line = None
        for cut in range(len(parts) - 1, 0, -1):
            line = self.line_of(".".join(parts[:cut]), parts[cut], exact=True)
            if line:
                break
        raise InventoryError(self.path, dotted, message, line or self.line_of(table, key))

    def check_keys(self, table: str, data: dict, allowed) -> None:
        for key in data:
            if key not in allowed:
                self.fail(table, key, f"unknown key{_suggest(key, allowed)}")

    def section(self, data, table, schema):
        if not isinstance(data, dict):
            self.fail("", table, f"expected a table, got {_tname(data)}")
        self.check_keys(table, data, schema)
        out = {}
        for key, (check, default) in schema.items():
            out[key] = self.checked(table, key, check, data[key]) if key in data else default
        return out

    def checked(self, table, key, check, value):
        try:
            return check(value)
        except ValueError as e:
            self.fail(table, key, str(e))

    def check_no_control_characters(self, data, table: str = "") -> None:
        """No string anywhere (keys included) may hold a control character: a line break in a
        value would start a new line in a config file or a new command in a script."""
        items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
        for key, value in items:
            name = str(key)
            if CONTROL_RE.search(name):
                self.fail(table, repr(name), "key has a control character")
            if isinstance(value, str) and CONTROL_RE.search(value):
                char = CONTROL_RE.search(value).group()
                if isinstance(key, int):
                    *head, last = table.rsplit(".", 1)
                    self.fail(".".join(head), f"{last}[{key}]", f"value has a control character ({char!r})")
                self.fail(table, name, f"value has a control character ({char!r})")
            if isinstance(value, (dict, list)):
                self.check_no_control_characters(value, f"{table}.{name}" if table else name)

    def build(self, data: dict) -> Inventory:
        self.check_no_control_characters(data)
        self.check_keys("", data, TOP_LEVEL)
        run = self.section(data.get("run", {}), "run", RUN_KEYS)
        local = self.section(data.get("local", {}), "local", LOCAL_KEYS)
        self.check_alias_pattern(local["container_alias"])
        settings_schema = {k: v[0] for k, v in HOST_SETTINGS.items()}

        defaults = self.settings_layer(data.get("defaults", {}), "defaults", settings_schema)
        groups_raw = data.get("groups", {})
        if not isinstance(groups_raw, dict):
            self.fail("", "groups", f"expected a table, got {_tname(groups_raw)}")
        groups = {}
        for gname, gdata in groups_raw.items():
            self.checked("groups", gname, _name, gname)
            groups[gname] = self.settings_layer(gdata, f"groups.{gname}", settings_schema)

        hosts_raw = data.get("hosts", {})
        if not isinstance(hosts_raw, dict):
            self.fail("", "hosts", f"expected a table, got {_tname(hosts_raw)}")
        if not hosts_raw:
            self.fail("", "hosts", "no hosts defined (add a [hosts.NAME] table)")
        hosts = {}
        for hname, hdata in hosts_raw.items():
            table = f"hosts.{hname}"
            self.checked("hosts", hname, _name, hname)
            if not isinstance(hdata, dict):
                self.fail("hosts", hname, f"expected a table, got {_tname(hdata)}")
            own = {k: v for k, v in hdata.items() if k not in HOST_ONLY}
            layer = self.settings_layer(own, table, settings_schema)
            if "address" not in hdata:
                self.fail(table, None, "missing required key 'address'")
            address = self.checked(table, "address", _str, hdata["address"])
            if not ADDRESS_RE.match(address):
                self.fail(table, "address", f"{address!r} is not a host name or IP address")
            group_names = self.checked(table, "groups", _str_list, hdata.get("groups", []))
            for g in group_names:
                if g not in groups:
                    self.fail(table, "groups", f"unknown group {g!r}{_suggest(g, groups)}")
            layers = [("defaults", defaults)] + [(f"group {g}", groups[g]) for g in group_names] + [(f"host {hname}", layer)]
            hosts[hname] = self.merge(hname, address, tuple(group_names), layers)

        people = self.people(data.get("people", {}))
        for host in hosts.values():
            self.check_local(host, hosts)
            self.check_jump(host, hosts)
            self.check_users(host, people)
        return Inventory(
            path=self.path,
            hosts=hosts,
            local=LocalSettings(
                ssh_config=_expand(local["ssh_config"]),
                known_hosts=_expand(local["known_hosts"]),
                identity=_expand(local["identity"]) if local["identity"] else None,
                public_keys=local["public_keys"],
                revoked_keys=local["revoked_keys"],
                container_alias=local["container_alias"],
                vscode_settings=_expand(local["vscode_settings"]) if local["vscode_settings"] else None,
            ),
            run=RunSettings(run["parallel"], run["connect_timeout"], Path(run["log_dir"])),
            people=people,
        )

    def people(self, raw) -> dict[str, Person]:
        if not isinstance(raw, dict):
            self.fail("", "people", f"expected a table of people by name, got {_tname(raw)}")
        people = {}
        for name, pdata in raw.items():
            self.checked("people", name, _name, name)
            table = f"people.{name}"
            values = self.section(pdata, table, PERSON_KEYS)
            if values["keys"] is None:
                self.fail(table, "keys", f"person {name!r} has no 'keys' (key lines or paths to .pub files)")
            if not values["keys"]:
                self.fail(table, "keys", f"person {name!r} has an empty key list")
            jump_user = values["jump_user"] or name
            self.checked(table, "jump_user", _user, jump_user)
            people[name] = Person(name, tuple(values["keys"]), jump_user, values["identity"], values["known_hosts"])
        return people

    def check_users(self, host: Host, people: dict[str, Person]) -> None:
        """Every name in a container's `users` is a [people.NAME] table."""
        for cname, spec in host.containers.items():
            for user in spec.users:
                if user not in people:
                    where = host.sources.get(f"containers.{cname}.users", "")
                    table = (f"groups.{where[6:]}" if where.startswith("group ") else
                             "defaults" if where == "defaults" else f"hosts.{host.name}")
                    self.fail(f"{table}.containers.{cname}", "users",
                              f"unknown person {user!r}{_suggest(user, people)} (add a [people.{user}] table)")

    def check_alias_pattern(self, pattern: str) -> None:
        try:
            alias = pattern.format(host="h", container="c")
        except (KeyError, IndexError, ValueError) as e:
            self.fail("local", "container_alias", f"{pattern!r} may only use {{host}} and {{container}} ({e})")
        if "{container}" not in pattern or not NAME_RE.match(alias):
            self.fail("local", "container_alias", f"{pattern!r} must contain {{container}} and give a valid ssh alias")

    def settings_layer(self, data, table, schema) -> dict:
        if not isinstance(data, dict):
            self.fail("", table, f"expected a table, got {_tname(data)}")
        self.check_keys(table, data, list(schema) + (list(HOST_ONLY) if table.startswith("hosts.") else []))
        layer = {}
        for key, value in data.items():
            if key == "containers":
                layer[key] = self.containers_layer(value, table)
            else:
                layer[key] = self.checked(table, key, schema[key], value)
        return layer

    def containers_layer(self, value, table) -> dict:
        if not isinstance(value, dict):
            self.fail(table, "containers", f"expected a table of containers by name, got {_tname(value)}")
        out = {}
        for cname, cdata in value.items():
            ctable = f"{table}.containers.{cname}"
            if not isinstance(cdata, dict):
                self.fail(f"{table}.containers", cname, f"expected a table, got {_tname(cdata)}")
            if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", cname):
                self.fail(f"{table}.containers", cname, "is not a valid container name (letters, digits, '_', '.', '-'; not starting with a symbol)")
            self.check_keys(ctable, cdata, CONTAINER_KEYS)
            out[cname] = {k: self.checked(ctable, k, CONTAINER_KEYS[k][0], v) for k, v in cdata.items()}
        return out

    def merge(self, hname, address, groups, layers) -> Host:
        settings = {k: v[1] for k, v in HOST_SETTINGS.items()}
        sources = {k: "built-in default" for k in HOST_SETTINGS}
        containers: dict[str, dict] = {}
        for label, layer in layers:
            for key, value in layer.items():
                if key == "containers":
                    for cname, cdata in value.items():
                        merged = containers.setdefault(cname, {})
                        for ck, cv in cdata.items():
                            merged[ck] = cv
                            sources[f"containers.{cname}.{ck}"] = label
                else:
                    settings[key] = value
                    sources[key] = label
        if address == LOCAL_ADDRESS and sources["user"] == "built-in default":
            settings["user"] = pwd.getpwuid(os.geteuid()).pw_name
            sources["user"] = 'this machine (address = "local")'
        settings["containers"] = {}
        table = f"hosts.{hname}"
        specs = {}
        ports: dict[int, str] = {}
        for cname, cdata in containers.items():
            ctable = f"{table}.containers.{cname}"
            for required in ("image", "ssh_port"):
                if required not in cdata:
                    self.fail(ctable, required, f"container {cname!r} on host {hname!r} has no {required!r}")
            for k, (_, default) in CONTAINER_KEYS.items():
                if k not in cdata:
                    sources.setdefault(f"containers.{cname}.{k}", "built-in default")
            if cdata["ssh_port"] in ports:
                self.fail(ctable, "ssh_port", f"host port {cdata['ssh_port']} is used by containers {ports[cdata['ssh_port']]!r} and {cname!r} on host {hname!r}")
            ports[cdata["ssh_port"]] = cname
            shm = cdata.get("shm_size", "")
            if shm and not SIZE_RE.match(shm):
                self.fail(ctable, "shm_size", f"{shm!r} is not a size like '16g' or '512m'")
            specs[cname] = ContainerSpec(
                name=cname,
                image=cdata["image"],
                ssh_port=cdata["ssh_port"],
                volumes=tuple(self.volume(ctable, v) for v in cdata.get("volumes", [])),
                shm_size=shm,
                gpus=tuple(cdata["gpus"]) if isinstance(cdata.get("gpus"), list) else cdata.get("gpus", "auto"),
                share_gpus=cdata.get("share_gpus", False),
                env=tuple(sorted(cdata.get("env", {}).items())),
                restart=cdata.get("restart", "unless-stopped"),
                allow_driver_mismatch=cdata.get("allow_driver_mismatch", False),
                allow_arch_mismatch=cdata.get("allow_arch_mismatch", False),
                keep_snapshots=cdata.get("keep_snapshots", 3),
                users=tuple(cdata.get("users", [])),
                ulimit_nofile=cdata.get("ulimit_nofile", settings["ulimit_nofile"]),
            )
        if settings["github_access"] == "agent" and not settings["forward_agent"]:
            where = sources["forward_agent"] if sources["forward_agent"] != "built-in default" else sources["github_access"]
            table = "defaults" if where == "defaults" else f"groups.{where[6:]}" if where.startswith("group ") else table
            self.fail(table, "forward_agent", "github_access = 'agent' reaches GitHub through the forwarded agent; "
                      "set forward_agent = true, or github_access = 'deploy-key' or 'none'")
        if sources["forward_agent"] == "built-in default":  # lend the agent only where GitHub access needs it
            settings["forward_agent"] = settings["github_access"] == "agent"
            sources["forward_agent"] = f"built-in default (github_access = {settings['github_access']!r})"
        return Host(hname, address, groups, settings, specs, sources)

    def volume(self, table, text) -> Volume:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            self.fail(table, "volumes", f"{text!r} is not HOST_PATH:CONTAINER_PATH[:ro]")
        if not parts[0].startswith("/"):
            self.fail(table, "volumes", f"{text!r}: host path {parts[0]!r} must be absolute")
        if not parts[1].startswith("/"):
            self.fail(table, "volumes", f"{text!r}: container path {parts[1]!r} must be absolute")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("rw", "ro"):
            self.fail(table, "volumes", f"{text!r}: mode must be 'ro' or 'rw'")
        return Volume(parts[0], parts[1], mode)

    def check_local(self, host: Host, hosts: dict[str, Host]) -> None:
        """A local host is reached without SSH: it has no jump host, is no one's jump host, and is one of a kind."""
        table = f"hosts.{host.name}"
        if host.is_local:
            others = [h.name for h in hosts.values() if h.is_local and h.name != host.name]
            if others and list(hosts).index(others[0]) < list(hosts).index(host.name):
                self.fail(table, "address", f'"local" is already host {others[0]!r}: only one host can be this machine')
            if host.jump:
                where = host.sources.get("jump", "")
                hint = "" if where.startswith("host") else f" (from {where}: take the host out of it)"
                self.fail(table, "jump", f"a local host (address = \"local\") cannot have a jump host, "
                                         f"but jump = {host.jump!r}{hint}")
        jump = hosts.get(host.jump) if host.jump else None
        if jump is not None and jump.is_local:
            self.fail(table, "jump", f"{jump.name!r} is this machine (address = \"local\") and cannot be a jump host; "
                                     "leave jump out to connect from here directly")

    def check_jump(self, host: Host, hosts: dict[str, Host]) -> None:
        seen = [host.name]
        jump = host.jump
        while jump:
            table = f"hosts.{seen[-1]}"
            if jump not in hosts:
                self.fail(table if host.sources.get("jump", "").startswith("host") else f"hosts.{host.name}", "jump",
                          f"jump host {jump!r} is not in the inventory{_suggest(jump, hosts)}")
            if jump in seen:
                self.fail(f"hosts.{host.name}", "jump", "jump hosts form a cycle: " + " -> ".join(seen + [jump]))
            seen.append(jump)
            jump = hosts[jump].jump


def _expand(p: str) -> Path:
    return Path(os.path.expanduser(p))


def describe(host: Host) -> list[tuple[str, str, str]]:
    """Rows of (key, value, source) for `fab show-host`."""
    rows = [("address", host.address, f"host {host.name}"), ("groups", ", ".join(host.groups) or "-", f"host {host.name}")]
    for key in HOST_SETTINGS:
        if key == "containers":
            continue
        rows.append((key, _show(host.settings[key]), host.sources[key]))
    for cname, spec in host.containers.items():
        for key in CONTAINER_KEYS:
            value = getattr(spec, key)
            if key in ("volumes", "users"):
                value = [str(v) for v in value]
            elif key == "gpus" and isinstance(value, tuple):
                value = list(value)
            elif key == "env":
                value = {k: MASK if isinstance(v, Secret) else v for k, v in value}
            rows.append((f"containers.{cname}.{key}", _show(value), host.sources.get(f"containers.{cname}.{key}", "built-in default")))
    return rows


def _show(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]" if value else "[]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {v}" for k, v in value.items()) + "}" if value else "{}"
    return str(value)
