"""A real OpenSSH server for tests: free loopback port, throwaway host and user keys, key-only login.

Not a conftest: deploy tests import ``Sshd`` and build their own fixture. Needs /usr/sbin/sshd (Debian
openssh-server) and root (sshd drops privileges per connection); the login user is the one running the tests.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from broker import free_port

log = logging.getLogger(__name__)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


class Sshd:
    """sshd -D on 127.0.0.1:<port>; ``user_key`` and ``known_hosts`` are what a client profile needs."""

    def __init__(self, folder: Path, *, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key = self.folder / "ssh_host_ed25519_key"
        self.user_key = self.folder / "id_ed25519"
        self.known_hosts = self.folder / "known_hosts"
        self.authorized_keys = self.folder / "authorized_keys"
        self.config_file = self.folder / "sshd_config"
        self.log_file = self.folder / "sshd.log"
        for key in (self.host_key, self.user_key):
            if not key.exists():
                subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.authorized_keys.write_text(self.user_key.with_suffix(".pub").read_text())
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config_file.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    # The throwaway files live in a test tmp dir, not in ~/.ssh with its strict modes.
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    f"AllowUsers {self.user}",
                    "MaxStartups 50",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                ]
            )
            + "\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Sshd:
        # sshd insists on its privilege separation directory even in a container that never ran it.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config_file)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd config rejected: {check.stderr.strip()}")
        with open(self.log_file, "ab") as log_fh:
            self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config_file)], stdout=log_fh, stderr=log_fh)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self._proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
