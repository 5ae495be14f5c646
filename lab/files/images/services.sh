#!/bin/sh
# Lab services image: apt-cacher-ng (the apt proxy) and Debian's docker-registry (the mirror).
set -eu
export DEBIAN_FRONTEND=noninteractive
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d

apt-get update -q
apt-get install -y -q --no-install-recommends apt-cacher-ng docker-registry

install -d -o apt-cacher-ng -g apt-cacher-ng /run/apt-cacher-ng /var/cache/apt-cacher-ng /var/log/apt-cacher-ng
install -d /var/lib/registry

rm -f /usr/sbin/policy-rc.d
apt-get clean
rm -rf /var/lib/apt/lists/*
