"""gpufleet: GPU servers from bare Ubuntu/Debian to a ready deep-learning environment.

`fab --list` shows every task; `fab -H gpu1,gpu2 bootstrap` runs the whole recipe.
Host tasks run in parallel (see fabric.yaml and gpufleet/executor.py).
"""
import sys

# Invoke stops Python writing .pyc files while it loads a fabfile, so every module of this
# project would be compiled from source on each run (about 0.1 s); `python -B` and
# PYTHONDONTWRITEBYTECODE still win.
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)

from gpufleet.cli import exit_on_interrupt  # noqa: E402

exit_on_interrupt()  # before the project's modules load (`gpufleet` installs it before Fabric's)

from gpufleet.fleet import skip_last_collection  # noqa: E402
from tasks.tree import ns  # noqa: E402,F401  (fab loads `ns` from here)

skip_last_collection()
