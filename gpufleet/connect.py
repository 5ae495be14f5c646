"""SSH connections through the jump chain, with host keys pinned per inventory name.

Host keys live in the known_hosts file named by `[local] known_hosts`, one line
per inventory name (`gpu1 ssh-ed25519 AAAA…`), the same file the generated ssh
config points OpenSSH at with `HostKeyAlias`.  The first connection to a host
pins its key; a different key later is refused.
"""
from __future__ import annotations

import base64
import socket
import threading
from pathlib import Path

import paramiko
from fabric import Config, Connection

from gpufleet.inventory import Inventory
from gpufleet.local_files import write_atomically


class KnownHosts:
    """The tool's known_hosts file, keyed by alias rather than address."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.keys: dict[str, list[tuple[str, str]]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 3 and not line.startswith("#"):
                    for alias in parts[0].split(","):
                        self.keys.setdefault(alias, []).append((parts[1], parts[2]))

    def get(self, alias: str) -> list[tuple[str, str]]:
        return list(self.keys.get(alias, []))

    def pin(self, alias: str, keytype: str, blob: str) -> bool:
        """Record a key for `alias` unless already pinned; True when it was new."""
        with self._lock:
            known = self.keys.setdefault(alias, [])
            if (keytype, blob) in known:
                return False
            known.append((keytype, blob))
            self._save()
            return True

    def replace(self, alias: str, entries: list[tuple[str, str]]) -> bool:
        """Set exactly these keys for `alias` (a container's keys, read from its host)."""
        with self._lock:
            if sorted(self.keys.get(alias, [])) == sorted(entries):
                return False
            self.keys[alias] = list(entries)
            self._save()
            return True

    def _save(self) -> None:
        lines = [f"{alias} {t} {b}\n" for alias in sorted(self.keys) for t, b in self.keys[alias]]
        write_atomically(self.path, "".join(lines).encode())


class NoDelayConnection(Connection):
    """A Fabric connection whose TCP socket sends at once (TCP_NODELAY).

    Paramiko leaves Nagle's algorithm on: each small SSH message then waits for the peer's
    delayed ACK, about 40 ms per command on loopback and per handshake step.  Hosts behind a
    jump host ride a channel of the jump host's connection, which is one of these."""

    def open(self):
        if self.is_connected or self.gateway:
            return super().open()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connect_kwargs = {**self.connect_kwargs, "sock": sock}
        try:
            return super().open()
        except BaseException:
            sock.close()
            raise


class _PinOnFirstUse(paramiko.MissingHostKeyPolicy):
    def __init__(self, store: KnownHosts, alias: str):
        self.store, self.alias = store, alias

    def missing_host_key(self, client, hostname, key):
        self.store.pin(self.alias, key.get_name(), key.get_base64())


class Connector:
    """Builds one Connection per host; jump hosts are shared by every host behind them."""

    def __init__(self, inventory: Inventory, sudo_password: str | None = None):
        self.inventory = inventory
        self.known_hosts = KnownHosts(inventory.local.known_hosts)
        self.sudo_password = sudo_password
        self._jumps: dict[str, Connection] = {}
        self._lock = threading.Lock()

    def config(self) -> Config:
        overrides = {"load_ssh_configs": False, "timeouts": {"connect": self.inventory.run.connect_timeout}}
        if self.sudo_password:
            overrides["sudo"] = {"password": self.sudo_password}
        return Config(overrides=overrides, ssh_config=paramiko.SSHConfig())

    def connection(self, name: str) -> Connection:
        host = self.inventory.hosts[name]
        gateway = self.jump_connection(host.jump) if host.jump else None
        return self._build(name, gateway)

    def jump_connection(self, name: str) -> Connection:
        with self._lock:
            return self._jump(name)

    def _jump(self, name: str) -> Connection:
        if name not in self._jumps:
            host = self.inventory.hosts[name]
            self._jumps[name] = self._build(name, self._jump(host.jump) if host.jump else None)
        return self._jumps[name]

    def _build(self, name: str, gateway: Connection | None) -> Connection:
        host = self.inventory.hosts[name]
        identity = self.inventory.local.identity
        connect_kwargs = {"banner_timeout": 30, "auth_timeout": 30}
        if identity:
            connect_kwargs.update(key_filename=[str(identity)], look_for_keys=False)
        conn = NoDelayConnection(host.address, user=host.user, port=host.port, config=self.config(),
                                 gateway=gateway, connect_kwargs=connect_kwargs,
                                 connect_timeout=self.inventory.run.connect_timeout)
        client = conn.client
        client.set_missing_host_key_policy(_PinOnFirstUse(self.known_hosts, name))
        lookup = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        for keytype, blob in self.known_hosts.get(name):
            try:
                key = paramiko.PKey.from_type_string(keytype, base64.b64decode(blob))
            except Exception:
                continue  # an unknown key type pinned by OpenSSH: paramiko just won't use it
            client.get_host_keys().add(lookup, keytype, key)
        return conn

    def jumps_in_use(self, names) -> list[str]:
        """Jump hosts needed by `names`, outermost first, each once."""
        order: list[str] = []
        for name in names:
            for hop in self.inventory.jump_chain(name):
                if hop.name not in order:
                    order.append(hop.name)
        return order

    def close(self) -> None:
        for conn in reversed(list(self._jumps.values())):
            conn.close()
