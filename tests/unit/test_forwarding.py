"""After sshd's reload the tool waits until it answers again: where it listens (from `sshd -T`), and the
wait itself, run against a real listener on this machine's loopback that comes up late."""
import socket
import subprocess
import threading
import time

import pytest

from gpufleet import forwarding


@pytest.mark.parametrize("dump,expected", [
    ({}, ("127.0.0.1", 22)),
    ({"port": ["2222"]}, ("127.0.0.1", 2222)),
    ({"port": ["22"], "listenaddress": ["[::]:22", "0.0.0.0:22"]}, ("127.0.0.1", 22)),
    ({"port": ["22"], "listenaddress": ["[::]:22"]}, ("::1", 22)),
    ({"port": ["22"], "listenaddress": ["10.0.0.5:2200"]}, ("10.0.0.5", 2200)),
])
def test_where_sshd_listens(dump, expected):
    assert forwarding.sshd_listener(dump) == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_wait_ends_once_sshd_answers_again_and_fails_where_it_never_does():
    port = free_port()

    def late_sshd():  # refused for a second, as between sshd's old sockets and its new ones
        time.sleep(1.0)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            conn, _ = server.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

    threading.Thread(target=late_sshd, daemon=True).start()
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", forwarding.sshd_answers_script("127.0.0.1", port, seconds=5)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and 0.9 < time.monotonic() - started < 5, done.stderr
    never = subprocess.run(["bash", "-c", forwarding.sshd_answers_script("127.0.0.1", free_port(), seconds=1)],
                           capture_output=True, text=True)
    assert never.returncode == 1 and "sshd does not answer on 127.0.0.1:" in never.stderr
