"""Pure: the forwarding-only account a server keeps for the people of its containers.

Each person gets one line in the account's authorized_keys (a file root owns and the account cannot
write): `restrict` (no pty, no agent/X11 forwarding, no ~/.ssh/rc), then forwarding turned back on
only to the SSH ports of their own containers on the server's loopback (`permitopen`), and any
command replaced by nologin.  So a person's key opens a tunnel to their container and nothing else
on the server.  sshd's own side is a drop-in file: the account added to AllowUsers where the server
already has an AllowUsers list (never creating one: that would lock out everyone else), and a
`Match User` block that allows local forwarding to the loopback only and no tty for it.
"""
from __future__ import annotations

import shlex

from gpufleet.authorized_keys import PublicKey

NOLOGIN = "/usr/sbin/nologin"
LOOPBACK = "127.0.0.1"


def key_line(person: str, key: PublicKey, ports: list[int]) -> str:
    """One authorized_keys line: this key may only forward to these loopback ports."""
    opens = ",".join(f'permitopen="{LOOPBACK}:{int(port)}"' for port in sorted(set(ports)))
    return f'restrict,port-forwarding,{opens},command="{NOLOGIN}" {key.keytype} {key.blob} gpufleet:{person}'


def authorized_keys(people: dict[str, tuple[list[PublicKey], list[int]]]) -> str:
    """The account's whole authorized_keys: {person: (their keys, the SSH ports of their containers here)};
    a person with no container on this server has no line."""
    lines = ["# gpufleet: forwarding only, each key to its person's own containers; "
             "`fab sync-keys` rewrites this file"]
    for person in sorted(people):
        keys, ports = people[person]
        if ports:
            lines += [key_line(person, key, ports) for key in keys]
    return "\n".join(lines) + "\n"


def sshd_drop_in(account: str, add_to_allow_users: bool) -> str:
    """The sshd_config drop-in for the account."""
    lines = ["# gpufleet: the forwarding-only account; `fab sync-keys` rewrites this file"]
    if add_to_allow_users:  # AllowUsers lines add up: this extends the server's list, it replaces nothing
        lines.append(f"AllowUsers {account}")
    lines += [f"Match User {account}",
              "    AllowTcpForwarding local",
              f"    PermitOpen {LOOPBACK}:*",
              "    PermitListen none",
              "    PermitTTY no",
              "    X11Forwarding no",
              "    AllowAgentForwarding no",
              "    AllowStreamLocalForwarding no",
              "    PermitTunnel no",
              "    GatewayPorts no",
              f"    ForceCommand {NOLOGIN}",
              ""]
    return "\n".join(lines)


def parse_sshd_dump(text: str) -> dict[str, list[str]]:
    """Pure: `sshd -T` output (one `keyword value` a line, keywords in lower case) -> keyword: its values."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def others_in_allow_users(dump: dict[str, list[str]], account: str) -> bool:
    """Whether the server restricts logins with AllowUsers entries besides the account's own."""
    entries = [word for value in dump.get("allowusers", []) for word in value.split()]
    return any(entry != account for entry in entries)


def forwarding_problems(dump: dict[str, list[str]], account: str) -> list[str]:
    """Pure: what in sshd's effective settings for the account (`sshd -T -C user=ACCOUNT,...`) would stop
    the forwarding: an empty list when it works."""
    problems = []
    allow = [w for value in dump.get("allowusers", []) for w in value.split()]
    if allow and account not in allow:
        problems.append(f"AllowUsers does not list {account} (does sshd_config Include /etc/ssh/sshd_config.d?)")
    forwarding = (dump.get("allowtcpforwarding") or ["yes"])[0].lower()
    if forwarding not in ("yes", "all", "local"):
        problems.append(f"AllowTcpForwarding is {forwarding} for {account}")
    for keyword in ("allowgroups", "denyusers", "denygroups"):
        if dump.get(keyword):
            problems.append(f"{keyword} is set ({' '.join(dump[keyword])}): check that it lets {account} in")
    return problems


def sshd_listener(dump: dict[str, list[str]]) -> tuple[str, int]:
    """Pure: an address and port where sshd listens (`sshd -T`'s listenaddress, else port), to see that it
    answers again after a reload: IPv4 first, any-address as the loopback."""
    addresses = dump.get("listenaddress", [])
    port = int((dump.get("port") or ["22"])[0])
    for value in sorted(addresses, key=lambda a: a.startswith("[")):
        host, _, listen_port = value.rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, int(listen_port or port)
    return "127.0.0.1", port


def sshd_answers_script(host: str, port: int, seconds: int = 10) -> str:
    """Shell: wait (at most `seconds`) until sshd at host:port sends its banner again: after SIGHUP it
    closes its listening sockets and executes itself anew, and a connection in between is refused."""
    probe = shlex.quote(f'exec 3<>"/dev/tcp/{host}/{port}" && head -c 4 <&3')
    return (f"sleep 0.3; i=0; while [ $i -lt {seconds * 5} ]; do "
            f"[ \"$(timeout 2 bash -c {probe} 2>/dev/null)\" = SSH- ] && exit 0; i=$((i + 1)); sleep 0.2; done; "
            f"echo 'sshd does not answer on {host}:{port} after its reload' >&2; exit 1")
