#!/bin/sh
# Lab server image: a bare Debian server (sshd, sudo, systemd available) with no Docker.
# Runs once in a build container on the default bridge; the result is committed.
# SUITE: the Debian release of the base image (bookworm, trixie).
set -eu
export DEBIAN_FRONTEND=noninteractive

# Like a real install: main, updates and security, in deb822 form.
rm -f /etc/apt/sources.list
cat > /etc/apt/sources.list.d/debian.sources <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# Keep package scripts from starting daemons inside the build container.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d

apt-get update -q
apt-get install -y -q --no-install-recommends \
    openssh-server sudo iproute2 procps ca-certificates gnupg curl systemd-sysv

useradd --create-home --uid 1000 --shell /bin/bash dev
echo 'dev ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/dev
chmod 0440 /etc/sudoers.d/dev
visudo -cf /etc/sudoers.d/dev

# See relax-docker-ulimits.sh: this sandbox cannot raise file limits, a real host can.
install -m 0755 /tmp/relax-docker-ulimits /usr/local/lib/gpufleet-lab-relax-docker-ulimits
rm /tmp/relax-docker-ulimits
echo 'DPkg::Post-Invoke { "/usr/local/lib/gpufleet-lab-relax-docker-ulimits"; };' \
    > /etc/apt/apt.conf.d/99gpufleet-lab-sandbox

# Host keys are made per lab host and injected when its container is created.
rm -f /etc/ssh/ssh_host_*
# A container has no consoles or kernel modules to manage.
systemctl mask getty@tty1.service console-getty.service systemd-modules-load.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount

rm -f /usr/sbin/policy-rc.d
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log
