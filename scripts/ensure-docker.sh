#!/usr/bin/env bash
# Make sure a Docker engine answers and the host has what the lab needs
# (docker.io, debootstrap, the OpenSSH client, gpg for the lab's package mirror). Called by `make demo`, `make test`
# and CI on a fresh Debian 12 machine as root; elsewhere it says what to install.
set -euo pipefail

PACKAGES=(docker.io debootstrap openssh-client openssh-server python3-venv gnupg)
LOG=/var/log/gpufleet-dockerd.log
WAIT_S=60

say() { printf 'ensure-docker: %s\n' "$*" >&2; }

missing_tools() {
    local tool
    for tool in docker debootstrap ssh ssh-keygen sshd tar gpg dpkg-deb; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || printf '%s ' "$tool"
    done
    # the tool's own venv: Debian ships ensurepip separately (python3-venv)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || printf 'python3-venv '
}

engine_answers() { docker info >/dev/null 2>&1; }

missing=$(missing_tools)
if [ -z "$missing" ] && engine_answers; then
    say "Docker engine answers; debootstrap, ssh and gpg are installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "this machine needs: a running Docker engine, debootstrap, the OpenSSH client (ssh, ssh-keygen), gpg"
    [ -n "$missing" ] && say "missing commands: $missing"
    engine_answers || say "no Docker engine answers \`docker info\`"
    say "on Debian/Ubuntu, as root: apt-get install -y ${PACKAGES[*]} && (setsid dockerd >$LOG 2>&1 </dev/null &)"
    say "elsewhere: install Docker Engine and start it, plus debootstrap and the OpenSSH client"
    exit 1
fi

if [ -n "$missing" ]; then
    say "installing ${PACKAGES[*]} (missing: $missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${PACKAGES[@]}"
fi

if engine_answers; then
    say "Docker engine answers"
    exit 0
fi

if pidof dockerd >/dev/null 2>&1; then
    say "dockerd runs but does not answer yet; waiting"
else
    # A killed engine leaves these behind, and the next start fails with "pid file found".
    if [ -e /var/run/docker.pid ]; then
        say "removing stale /var/run/docker.pid (no dockerd runs)"
        rm -f /var/run/docker.pid
    fi
    if ! pidof containerd >/dev/null 2>&1; then
        rm -f /var/run/docker/containerd/containerd.pid /var/run/docker/containerd/containerd.sock \
              /var/run/docker/containerd/containerd-debug.sock
    fi
    say "starting dockerd (log: $LOG)"
    setsid dockerd >"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq $((WAIT_S * 2))); do
    if engine_answers; then
        say "Docker engine answers"
        exit 0
    fi
    sleep 0.5
done
say "no answer from the Docker engine after ${WAIT_S}s; the end of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
