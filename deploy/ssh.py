"""Run commands on and copy files to a device with the system's OpenSSH client (``ssh``/``scp`` subprocesses).

Always non-interactive (BatchMode: no password or passphrase prompt that would hang a deploy), host keys always
checked (StrictHostKeyChecking=yes against the profile's known_hosts), and every ssh-level failure turned into one
line that says what happened and what to do: unreachable, refused, unknown or changed host key, auth refused.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from facelite.deploy.errors import SshError

log = logging.getLogger(__name__)

SSH_FAILED = 255  # ssh's own exit status for connection/auth problems (a remote command's status is passed through)

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str
    port: int = 22
    identity_file: Path | None = None
    known_hosts: Path | None = None
    config_file: str | None = None
    connect_timeout_s: int = 10

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def options(self) -> list[str]:
        opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout_s}",
        ]
        # Dead links are noticed within a minute instead of hanging a deploy forever.
        opts += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
        if self.config_file:
            opts = ["-F", self.config_file, *opts]
        if self.identity_file is not None:
            opts += ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        return opts


@dataclass(frozen=True)
class RemoteResult:
    returncode: int
    stdout: str
    stderr: str


_DIAGNOSES: tuple[tuple[str, str, str], ...] = (
    ("Could not resolve hostname", "host name does not resolve", "check ssh.host in the profile"),
    ("Connection refused", "connection refused (no ssh server on that port?)", "check ssh.host/ssh.port"),
    ("Connection timed out", "unreachable: connection timed out", "is the device on and on the network?"),
    ("timed out", "unreachable: timed out", "is the device on and on the network?"),
    ("No route to host", "unreachable: no route to host", "is the device on and on the network?"),
    ("Network is unreachable", "unreachable: network is unreachable", "check the host's network"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the device's host key has CHANGED", "if the device was reinstalled, "
     "remove its old key with `ssh-keygen -R HOST` and add the new one"),
    ("Host key verification failed", "host key unknown or not trusted", "add the device's key to ssh.known_hosts "
     "(ssh-keyscan -p PORT HOST >> known_hosts, after checking its fingerprint)"),
    ("No ED25519 host key is known", "host key unknown", "add the device's key to ssh.known_hosts"),
    ("Permission denied", "authentication refused", "check ssh.user and ssh.identity_file (and authorized_keys)"),
    ("Too many authentication failures", "authentication refused", "set ssh.identity_file"),
    ("Connection closed", "connection closed by the device", "check sshd on the device (MaxStartups, AllowUsers)"),
    ("Connection reset", "connection reset", "check the network and sshd on the device"),
    ("no such identity", "identity file not found", "check ssh.identity_file"),
)  # fmt: skip


def diagnose(stderr: str) -> tuple[str, str]:
    for needle, what, fix in _DIAGNOSES:
        if needle.lower() in stderr.lower():
            return what, fix
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return (f"ssh failed: {lines[-1] if lines else 'no message'}", "run the ssh command by hand with -v")


class Ssh:
    """One device; ``runner`` is subprocess.run unless a test passes something else."""

    def __init__(self, target: SshTarget, runner: Runner = subprocess.run, ssh: str = "ssh", scp: str = "scp") -> None:
        self.target = target
        self.runner = runner
        self.ssh = ssh
        self.scp = scp

    def _fail(self, stderr: str, doing: str) -> SshError:
        what, fix = diagnose(stderr)
        return SshError(f"{what} while {doing}", self.target.label, fix)

    def run(
        self, command: Sequence[str], *, input: bytes | None = None, timeout: float = 600.0, what: str | None = None
    ) -> RemoteResult:
        """Run ``command`` (argv, quoted for the remote shell); ssh failures raise SshError, the rest returns.

        ``what`` names the step in error messages ("the probe"); default: the program run.
        """
        remote = shlex.join(command)
        argv = [self.ssh, *self.target.options(), "-p", str(self.target.port), "-l", self.target.user]
        argv += [self.target.host, "--", remote]
        log.debug("ssh %s: %s", self.target.label, remote)
        try:
            proc = self.runner(argv, input=input if input is not None else b"", capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise SshError(f"the ssh client ({self.ssh}) is not installed", fix="install openssh-client") from None
        except subprocess.TimeoutExpired:
            raise SshError(f"no answer within {timeout:.0f} s during {what or command[0]}", self.target.label) from None
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        if proc.returncode == SSH_FAILED:
            raise self._fail(err, what or f"running {Path(command[0]).name}")
        return RemoteResult(proc.returncode, out, err)

    def copy(self, files: Sequence[Path], remote_dir: str, *, timeout: float = 3600.0) -> None:
        """Upload ``files`` into ``remote_dir`` (created first; relative paths are under the login's home)."""
        made = self.run(["mkdir", "-p", "--", remote_dir], timeout=60)
        if made.returncode != 0:
            raise SshError(f"cannot create {remote_dir}: {made.stderr.strip()}", self.target.label)
        argv = [self.scp, "-q", "-p", *self.target.options(), "-P", str(self.target.port)]
        argv += [str(f) for f in files]
        argv.append(f"{self.target.user}@{_scp_host(self.target.host)}:{remote_dir}/")
        try:
            proc = self.runner(argv, capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise SshError(f"the scp client ({self.scp}) is not installed", fix="install openssh-client") from None
        except subprocess.TimeoutExpired:
            raise SshError(f"upload did not finish within {timeout:.0f} s", self.target.label) from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            if "No space left" in err:
                raise SshError(f"upload failed: no space left on the device in {remote_dir}", self.target.label)
            raise self._fail(err, "uploading the bundle")


def _scp_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # IPv6 literal
