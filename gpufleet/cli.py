"""The `gpufleet` command: `fab` with this project's tasks, and Ctrl-C handled from its first moment.

`fab` is Fabric's own entry point: until the fabfile is imported (about half a second:
Fabric, Invoke's config, the project's modules), Ctrl-C ends it with Python's
KeyboardInterrupt traceback, or with Invoke's silent exit 1.  This module imports
nothing but the standard library, so `gpufleet` installs its handler some 20 ms after
the interpreter starts, before Fabric is imported.
"""
import os
import signal
import sys

INTERRUPTED = b"interrupted (Ctrl-C) before any host was contacted\n"


def exit_on_interrupt() -> None:
    """Make Ctrl-C end the process with exit 130 and one line, until the executor takes over.

    A shell starts background jobs with SIGINT ignored, and Python keeps an ignored
    SIGINT ignored: then `kill -INT` would never stop fab.  Until the executor takes
    over (it turns SIGINT into KeyboardInterrupt and prints a recap), nothing has been
    contacted, so exiting at once is safe."""
    def now(signum, frame):
        sys.stdout.flush()
        os.write(2, INTERRUPTED)
        os._exit(130)
    signal.signal(signal.SIGINT, now)


def main() -> int:
    """`fab` with this project's tasks and settings (what the checkout's fabfile.py and fabric.yaml give
    `fab`), run from any folder: the inventory is ./hosts.toml or FABRIC_INVENTORY. Ctrl-C is handled
    before Fabric loads."""
    exit_on_interrupt()
    from fabric import Config
    from fabric.main import Fab

    from gpufleet.executor import FleetExecutor
    from gpufleet.fleet import skip_last_collection
    from gpufleet.tasks.tree import ns

    class GpufleetConfig(Config):
        prefix = "fabric"

        @staticmethod
        def global_defaults():
            defaults = Config.global_defaults()
            defaults["load_ssh_configs"] = False  # the inventory says how to reach each host
            return defaults

    skip_last_collection()
    program = Fab(name="gpufleet", binary="gpufleet", version=version("gpufleet"), namespace=ns,
                  config_class=GpufleetConfig, executor_class=FleetExecutor)
    try:
        return program.run()
    finally:
        # the work is done: a Ctrl-C while Python shuts down (its handlers back to the default) would
        # end a finished run as killed; an ignored SIGINT stays ignored to the end
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed(distribution)
    except PackageNotFoundError:
        return "unknown"
