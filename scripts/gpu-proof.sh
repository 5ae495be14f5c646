#!/usr/bin/env bash
# The GPU proof: `bootstrap` takes a real NVIDIA host from driver-only to torch.cuda in a container
# reached over SSH (docs/gpu-proof.md has the last record).
#
# Here (a machine with the project's venv, ../shared and Debian's archive), once:
#     bash scripts/gpu-proof.sh prepare      # .proof/: the noble + NVIDIA mirror, OpenSSH and iptables
#                                            # .debs, the Python wheels the GPU host lacks (~62 MiB)
# There (the GPU host, as root, from the repository root, .proof/ beside it):
#     bash scripts/gpu-proof.sh run          # then tests/gpu/test_bootstrap_gpu.py does the proof
#
# What `run` does to the host before the tool runs, and why: the borrowed H200 has no network, no
# OpenSSH and no iptables, which a real server has. So it installs Debian's iptables from .proof/debs,
# unpacks an OpenSSH client for the proof's own `ssh`, sets the machine's Ubuntu apt sources aside (they
# cannot be reached) and serves the mirror on 127.0.0.1:8000. Everything after that is the tool.
set -euo pipefail
cd "$(dirname "$0")/.."
PROOF=${GPUFLEET_PROOF_DIR:-$PWD/.proof}
WORK=/tmp/gpufleet-proof
IPTABLES="iptables libip4tc2 libip6tc2 libxtables12 libnetfilter-conntrack3 libnfnetlink0 libnftnl11 libmnl0 netbase"
DEBS="$IPTABLES openssh-server openssh-client openssh-sftp-server libwrap0 libnsl2 libtirpc3"
# cryptography pinned: its newer wheels make the kit and the tree over the 64 MiB one call carries
WHEELS="fabric==3.2.3 invoke==2.2.1 paramiko==5.1.0 decorator deprecated cryptography==46.0.3 bcrypt pynacl cffi pycparser"

prepare() {
    [ -e "$PROOF" ] && { echo "gpu-proof: $PROOF exists; remove it first" >&2; exit 1; }
    mkdir -p "$PROOF/debs" "$PROOF/wheels"
    .venv/bin/python -m lab.mirror --out "$PROOF/mirror" --docker noble --nvidia --url http://127.0.0.1:8000
    # Debian 12's builds: their glibc needs are older than Ubuntu 24.04's
    for p in $DEBS; do (cd "$PROOF/debs" && APT_CONFIG=/var/tmp/gpufleet-lab/apt/apt.conf apt-get download -q "$p/bookworm"); done
    for w in $WHEELS; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$PROOF/wheels" "$w"
    done
    du -sh "$PROOF"
}

run() {
    mkdir -p "$WORK"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$PROOF"/wheels/*.whl
    mkdir -p "$WORK/ssh"
    for p in openssh-client libwrap0 libnsl2 libtirpc3; do dpkg -x "$PROOF"/debs/"${p}"_*.deb "$WORK/ssh"; done
    # iptables and those of its libraries the machine lacks (never a downgrade of one it has)
    missing=()
    for p in $IPTABLES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$PROOF"/debs/"${p}"_*.deb); done
    [ ${#missing[@]} -eq 0 ] || dpkg -i "${missing[@]}" >/dev/null
    mkdir -p "$WORK/apt-sources-set-aside"
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] && mv "$f" "$WORK/apt-sources-set-aside/"
    done
    [ -s /etc/apt/sources.list ] && mv /etc/apt/sources.list "$WORK/apt-sources-set-aside/"
    # this VM cannot raise RLIMIT_NOFILE as far as Docker's SysV script asks (a real server can): raise
    # the kernel's ceiling, and, as in the lab, let the script's ulimit lines fail softly after each dpkg run
    [ "$(cat /proc/sys/fs/nr_open)" -ge 1048576 ] || sysctl -q -w fs.nr_open=1048576 || true
    install -m 0755 lab/files/relax-docker-ulimits.sh /usr/local/sbin/gpufleet-relax-docker-ulimits
    echo 'DPkg::Post-Invoke { "/usr/local/sbin/gpufleet-relax-docker-ulimits"; };' > /etc/apt/apt.conf.d/99gpufleet-proof
    setsid python3 -m http.server --bind 127.0.0.1 --directory "$PROOF/mirror" 8000 >"$WORK/http.log" 2>&1 </dev/null &
    # a server has OpenSSH: the tool generates each container's host key with the server's ssh-keygen
    export PATH="$WORK/ssh/usr/bin:$PATH"
    export PYTHONPATH="$WORK/site:$PWD" GPUFLEET_PROOF_DIR="$PROOF" PYTHONUNBUFFERED=1
    python3 -m pytest -p no:cacheprovider -m gpu tests/gpu -v -s
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu-proof.sh prepare|run" >&2; exit 2 ;;
esac
