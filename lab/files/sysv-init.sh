#!/bin/sh
# PID 1's child on a lab server without systemd (like WSL2): start sshd the SysV way, then idle.
# `service NAME start` works here because /run/systemd/system does not exist.
service ssh start
trap 'service ssh stop; exit 0' TERM INT
while :; do
    sleep 3600 &
    wait $!
done
