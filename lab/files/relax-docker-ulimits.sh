#!/bin/sh
# gpufleet lab only (run by an apt hook after every dpkg run on a lab server).
# The lab's machines cannot raise RLIMIT_NOFILE or RLIMIT_NPROC (the outer runtime
# lacks CAP_SYS_RESOURCE), so the `ulimit` lines of docker's SysV script fail there
# and, under `set -e`, abort `service docker start`. On a real host (WSL2 included)
# they succeed. Let them fail softly; nothing else in the script changes.
script=/etc/init.d/docker
[ -f "$script" ] || exit 0
sed -i -e 's/^\([[:space:]]*ulimit -[npu] [0-9a-z]*\)$/\1 2>\/dev\/null || true/' "$script"
