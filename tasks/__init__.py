"""The stages of the tool, one module and one Invoke namespace each.

Host tasks are run once per host by gpufleet.executor.FleetExecutor and receive
a HostContext as `c`; every one takes `--dry-run` and `--json PATH`.
"""

HOST_TASK_HELP = {
    "dry-run": "show every change it would make, with diffs, and change nothing",
    "json": "also write the recap as JSON to this path",
}
