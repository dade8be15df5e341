"""Deploy errors: each is reported as one line (what, where, fix) and a non-zero exit, never a traceback."""

from __future__ import annotations

from facelite.errors import ConfigError, FaceliteError


class ProfileError(ConfigError):
    """A device profile or group file is missing, unknown or invalid."""


class BundleError(FaceliteError):
    """The bundle cannot be built: a model, wheel, photo or file it needs is missing or wrong."""


class SshError(FaceliteError):
    """The device cannot be reached or refused us (network, host key, authentication)."""

    exit_code = 3


class RemoteError(FaceliteError):
    """A step on the device failed; ``check`` names it (disk, verify, install, self-test, service...)."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, check: str = "remote") -> None:
        self.check = check
        super().__init__(what, where, fix)


class HealthError(FaceliteError):
    """The new release did not prove itself healthy over MQTT within the deadline."""
