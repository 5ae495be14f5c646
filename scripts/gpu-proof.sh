#!/usr/bin/env bash
# The GPU proof: `bootstrap` takes a real NVIDIA host from driver-only to torch.cuda in a container
# reached over SSH (docs/gpu-proof.md has the last records).
#
# Here (a machine with the project's venv, ../shared and Debian's archive), once:
#     bash scripts/gpu-proof.sh prepare      # .proof/kit: the noble + NVIDIA mirror (both engines, both
#                                            # toolkits), OpenSSH and iptables .debs, the wheels the GPU host
#                                            # lacks; then .proof/part-N: the kit cut into pieces one device
#                                            # call can carry (64 MiB with the tree)
# There (the GPU host, as root, from the repository root), one call per part on one warm machine:
#     bash scripts/gpu-proof.sh gather       # copies the carried .proof/part-N into /tmp/gpufleet-proof/kit
#     bash scripts/gpu-proof.sh run 26 local # Docker 26 + the toolkit 1.18, the host as `address = "local"`
#     bash scripts/gpu-proof.sh reset        # removes the engine, the toolkit and their state
#     bash scripts/gpu-proof.sh run 29 ssh   # Docker 29 + the toolkit 1.20 (CDI), the host reached over SSH
#
# What `run` does to the host before the tool runs, and why: the borrowed machine has no network, no
# OpenSSH and no iptables, which a real server has. So it installs Debian's iptables from the kit, unpacks
# Debian's OpenSSH (the proof's own `ssh`; `ssh-keygen`, which the tool runs on a server, on PATH; with
# `ssh`, an sshd on 127.0.0.1:2200 that lets the proof's key in as root), sets the machine's Ubuntu apt
# sources aside (they cannot be reached) and serves the mirror on 127.0.0.1:8000. Everything after that
# is the tool.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD/.proof
WORK=/tmp/gpufleet-proof
PROOF=${GPUFLEET_PROOF_DIR:-$WORK/kit}
PART_MIB=58   # a part and the tree within one call's 64 MiB
SSH_LIBS=$WORK/ssh/usr/lib/x86_64-linux-gnu:$WORK/ssh/lib/x86_64-linux-gnu
IPTABLES="iptables libip4tc2 libip6tc2 libxtables12 libnetfilter-conntrack3 libnfnetlink0 libnftnl11 libmnl0 netbase"
DEBS="$IPTABLES openssh-server openssh-client openssh-sftp-server libwrap0 libnsl2 libtirpc3"
# cryptography pinned: its newer wheels make the kit and the tree over the 64 MiB one call carries
WHEELS="fabric==3.2.3 invoke==2.2.1 paramiko==5.1.0 decorator deprecated cryptography==46.0.3 bcrypt pynacl cffi pycparser"

prepare() {
    [ -e "$HERE" ] && { echo "gpu-proof: $HERE exists; remove it first" >&2; exit 1; }
    local PROOF=$HERE/kit
    mkdir -p "$PROOF/debs" "$PROOF/wheels"
    # one noble dist with both engines (26 and today's 29), one NVIDIA repo with both toolkits (1.18, 1.20)
    .venv/bin/python -m lab.mirror --out "$PROOF/mirror" --docker noble --today noble --nvidia \
        --toolkit 1.18.0 --toolkit 1.20.0 --url http://127.0.0.1:8000
    # Debian 12's builds: their glibc needs are older than Ubuntu 24.04's
    for p in $DEBS; do (cd "$PROOF/debs" && APT_CONFIG=/var/tmp/gpufleet-lab/apt/apt.conf apt-get download -q "$p/bookworm"); done
    for w in $WHEELS; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$PROOF/wheels" "$w"
    done
    du -sh "$PROOF"
    pack
}

# the kit's files into parts of at most PART_MIB each (hard links: no second copy here): what the Docker 29
# run needs first, largest first, so that the first parts carry it and the older engine's packages come last
pack() {
    rm -rf "$HERE"/part-*
    (cd "$HERE/kit" && find . -type f -printf '%s %p\n' |
        awk '{ print ($2 ~ /_(5%3a)?26\.|_1\.7\.|_1\.18\./ ? 1 : 0), $0 }' | sort -k1,1n -k2,2rn | cut -d' ' -f2-) |
    awk -v limit=$((PART_MIB << 20)) '
        { for (i = 1; i <= n && used[i] + $1 > limit; i++); if (i > n) n = i; used[i] += $1; print i, $2 }' |
    while read -r part file; do
        mkdir -p "$(dirname "$HERE/part-$part/$file")" && ln "$HERE/kit/$file" "$HERE/part-$part/$file"
    done
    du -sh "$HERE"/part-*
}

gather() {
    mkdir -p "$PROOF"
    for part in "$HERE"/part-*; do [ -d "$part" ] && cp -a "$part/." "$PROOF/" && echo "gathered $part"; done
    du -sh "$PROOF"
}

# the engine, the toolkit and everything they and the tool wrote, so the next stack starts as a bare host
reset() {
    for c in $(docker ps -aq 2>/dev/null); do docker rm -f "$c" >/dev/null; done
    service docker stop >/dev/null 2>&1 || true
    pkill -x dockerd || true; pkill -x containerd || true; sleep 2
    # only the installed ones: apt refuses the whole purge for a name it does not know (a 2026-12-07 reset left
    # Docker 29 in place that way, and the Docker 26 run then met a downgrade)
    local installed
    installed=$(dpkg-query -W -f '${Package} ${db:Status-Status}\n' docker-ce docker-ce-cli containerd.io \
        docker-ce-rootless-extras nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools \
        libnvidia-container1 2>/dev/null | awk '$2 != "not-installed" { print $1 }' || true)
    [ -z "$installed" ] || DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $installed >/dev/null
    rm -rf /etc/docker /var/lib/docker /var/lib/docker-proof /var/lib/containerd /etc/containerd \
        /etc/nvidia-container-runtime /var/run/cdi /etc/cdi /var/lib/gpufleet /etc/gpufleet \
        /etc/apt/sources.list.d/docker.* /etc/apt/sources.list.d/nvidia-container-toolkit.* \
        /etc/apt/keyrings/docker.asc /etc/apt/keyrings/nvidia-container-toolkit.asc "$WORK/logs" "$WORK/ssh_config"
    echo "reset: $(dpkg -l | grep -c -E '^ii .*(docker|nvidia-container)' || true) engine/toolkit packages left"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# an sshd of the machine's own on loopback, as a server has: the proof reaches the host through it
start_sshd() {
    mkdir -p "$WORK/sshd" /run/sshd
    for p in openssh-server openssh-sftp-server; do dpkg -x "$PROOF"/debs/"${p}"_*.deb "$WORK/sshd"; done
    getent passwd sshd >/dev/null || useradd -r -d /run/sshd -s /usr/sbin/nologin sshd
    [ -e "$WORK/sshd/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd/host_ed25519"
    [ -e "$WORK/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_ed25519"
    install -d -m 700 /root/.ssh && cat "$WORK/id_ed25519.pub" >> /root/.ssh/authorized_keys
    printf '%s\n' 'Port 2200' 'ListenAddress 127.0.0.1' "HostKey $WORK/sshd/host_ed25519" 'PermitRootLogin prohibit-password' \
        'PasswordAuthentication no' 'KbdInteractiveAuthentication no' 'UsePAM no' 'AllowTcpForwarding yes' \
        "Subsystem sftp $WORK/sshd/usr/lib/openssh/sftp-server" > "$WORK/sshd/sshd_config"
    env LD_LIBRARY_PATH="$SSH_LIBS" "$WORK/sshd/usr/sbin/sshd" -t -f "$WORK/sshd/sshd_config"
    setsid env LD_LIBRARY_PATH="$SSH_LIBS" "$WORK/sshd/usr/sbin/sshd" -D -e -f "$WORK/sshd/sshd_config" \
        >"$WORK/sshd.log" 2>&1 </dev/null &
    echo "[127.0.0.1]:2200 $(cut -d' ' -f1,2 "$WORK/sshd/host_ed25519.pub")" > "$WORK/known_hosts"
}

run() {
    local stack=${1:?usage: run 26|29 local|ssh [TEST ...]} via=${2:?usage: run 26|29 local|ssh [TEST ...]}
    shift 2
    mkdir -p "$WORK"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$PROOF"/wheels/*.whl
    mkdir -p "$WORK/ssh"
    for p in openssh-client libwrap0 libnsl2 libtirpc3; do dpkg -x "$PROOF"/debs/"${p}"_*.deb "$WORK/ssh"; done
    # a server has OpenSSH: the tool makes each container's host key with the server's ssh-keygen, which
    # must be on the PATH of a command that comes over SSH too
    for tool in ssh ssh-keygen; do
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$SSH_LIBS" "$WORK/ssh/usr/bin/$tool" > "/usr/local/bin/$tool"
        chmod 755 "/usr/local/bin/$tool"
    done
    # iptables and those of its libraries the machine lacks (never a downgrade of one it has)
    missing=()
    for p in $IPTABLES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$PROOF"/debs/"${p}"_*.deb); done
    [ ${#missing[@]} -eq 0 ] || dpkg -i "${missing[@]}" >/dev/null
    mkdir -p "$WORK/apt-sources-set-aside"
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        case "$f" in */docker.sources|*/nvidia-container-toolkit.sources) continue ;; esac  # the tool's, from a run before
        [ -e "$f" ] && mv "$f" "$WORK/apt-sources-set-aside/"
    done
    [ -s /etc/apt/sources.list ] && mv /etc/apt/sources.list "$WORK/apt-sources-set-aside/"
    # this VM cannot raise RLIMIT_NOFILE as far as Docker's SysV script asks (a real server can): raise
    # the kernel's ceiling, and, as in the lab, let the script's ulimit lines fail softly after each dpkg run
    [ "$(cat /proc/sys/fs/nr_open)" -ge 1048576 ] || sysctl -q -w fs.nr_open=1048576 || true
    install -m 0755 lab/files/relax-docker-ulimits.sh /usr/local/sbin/gpufleet-relax-docker-ulimits
    echo 'DPkg::Post-Invoke { "/usr/local/sbin/gpufleet-relax-docker-ulimits"; };' > /etc/apt/apt.conf.d/99gpufleet-proof
    # the mirror holds both engines (as Docker's repo does); a host that stays on 26 is pinned as an admin
    # would pin it (the tool has no engine-version key; the toolkit's version is the inventory's)
    if [ "$stack" = 26 ]; then
        python3 - "$PROOF/mirror/MIRROR.json" > /etc/apt/preferences.d/gpufleet-proof-pins <<'PY'
import json, sys
mirror = json.load(open(sys.argv[1]))
older, today = mirror["docker"]["noble"], mirror["docker_today"]["noble"]
for name, version in sorted(older.items()):
    if today.get(name, version) != version:
        print(f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n")
PY
    else
        rm -f /etc/apt/preferences.d/gpufleet-proof-pins
    fi
    listening 8000 || { setsid python3 -m http.server --bind 127.0.0.1 --directory "$PROOF/mirror" 8000 \
        >"$WORK/http.log" 2>&1 </dev/null & }
    [ "$via" = local ] || listening 2200 || start_sshd
    export PYTHONPATH="$WORK/site:$PWD" GPUFLEET_PROOF_DIR="$PROOF" PYTHONUNBUFFERED=1
    export GPUFLEET_PROOF_STACK="$stack" GPUFLEET_PROOF_VIA="$via"
    # the tests named after STACK VIA (all of tests/gpu by default): one device call may not hold them all
    python3 -m pytest -p no:cacheprovider -m gpu -v -s "${@:-tests/gpu}"
}

case "${1:-}" in
    prepare) prepare ;;
    pack) pack ;;
    gather) gather ;;
    reset) reset ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash scripts/gpu-proof.sh prepare|pack|gather|reset|run 26|29 local|ssh [TEST ...]" >&2; exit 2 ;;
esac
