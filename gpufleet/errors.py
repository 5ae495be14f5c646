"""Typed errors: every failure the user can cause or meet is one of these."""


class FleetError(Exception):
    """Base of every error the tool reports to the user (one line, no traceback)."""


class InputError(FleetError):
    """Bad user input or a malformed existing file; exit code 2 when raised before any host is touched."""


class InventoryError(InputError):
    """A problem in the inventory file, naming the file, the key and, where known, the line."""

    def __init__(self, path, key: str, message: str, line: int | None = None):
        self.path, self.key, self.line = str(path), key, line
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class CommandFailed(FleetError):
    """A remote command exited non-zero; carries the masked command, exit code and stderr tail."""

    def __init__(self, command: str, exit_code: int, stderr: str, host: str = ""):
        self.command, self.exit_code, self.stderr, self.host = command, exit_code, stderr, host
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:])
        super().__init__(f"`{command}` exited {exit_code}" + (f": {tail}" if tail else ""))


class CommandTimedOut(FleetError):
    """A remote command ran past its timeout and was stopped; names the command and the limit."""

    def __init__(self, command: str, seconds: float, setting: str, host: str = ""):
        self.command, self.seconds, self.setting, self.host = command, seconds, setting, host
        super().__init__(f"`{command}` hung: still running after {seconds:g}s, stopped "
                         f"(the limit is {setting} in hosts.toml)")


class ValidationFailed(FleetError):
    """A rendered file failed its validator; the file was not installed."""

    def __init__(self, path: str, validator: str, output: str):
        self.path, self.validator, self.output = path, validator, output
        tail = " | ".join(output.strip().splitlines()[-3:])
        super().__init__(f"{path} failed validation ({validator}): {tail}; the file was not installed")


class ConnectError(FleetError):
    """The host (or a jump host on the way) could not be reached."""
