"""A real SSH server for the rsync off-site tests: a private ``/usr/sbin/sshd -D -e -f CONFIG``
(Debian's ``openssh-server``, installed by scripts/test.sh without starting the system service).

Everything lives in a temp dir: its own ed25519 host key, its config, ``PidFile`` and
``AuthorizedKeysFile``; it listens on 127.0.0.1 on a free port only and accepts public keys
only (no passwords, no PAM). The tests run as root, so the login user is root
(``PermitRootLogin prohibit-password``). The client side gets a key pair of its own and a
``known_hosts`` file with ``[127.0.0.1]:PORT ssh-ed25519 …`` — never ``~/.ssh``, never /etc/ssh.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from coderz_backup.waiting import wait_until

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keypair(path: Path, comment: str = "coderz-test") -> Path:
    """A new passphrase-less ed25519 key pair ``path`` / ``path.pub`` (0600 private key)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    path.chmod(0o600)
    return path


class Sshd:
    """A private sshd on ``127.0.0.1:port``; ``client_key`` may log in as ``user``."""

    def __init__(self, root: Path):
        self.root = root
        self.port = 0
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None

    # -- files the client side uses --------------------------------------------------

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    def host_line(self) -> str:
        """The known_hosts line of this server's host key."""
        key = (self.root / "host_ed25519_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def target(self, path: Path | str) -> str:
        return f"{self.user}@127.0.0.1:{path}"

    # -- the server ------------------------------------------------------------------

    def start(self, timeout: float = 20) -> "Sshd":
        if not SSHD.is_file():
            raise RuntimeError(f"{SSHD} is missing: run scripts/test.sh once (it installs openssh-server "
                               "without starting the system ssh service)")
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / "host_ed25519_key").exists():
            keypair(self.root / "host_ed25519_key", "coderz-test-host")
            keypair(self.client_key)
            self.authorized_keys.write_text((self.root / "client_key.pub").read_text())
            self.authorized_keys.chmod(0o600)
        if not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
        if not self.port:
            self.port = free_port()
        self.known_hosts.write_text(self.host_line())
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.root / 'host_ed25519_key'}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel INFO",
            # the subsystem line and "Match" of /etc/ssh are never read: this file is the whole config
            "",
        ]))
        check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t refused {config}: {check.stderr.strip()}")
        self.log = self.root / "sshd.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        def banner() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}; see {self.log}:\n"
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                return s.recv(64).startswith(b"SSH-2.0-")

        def not_ready(_last):
            self.stop()
            return RuntimeError(f"sshd on 127.0.0.1:{self.port} sent no SSH banner within {timeout:.0f}s; "
                                f"see {self.log}")

        wait_until(banner, timeout=timeout, interval=0.1, retry=OSError, error=not_ready)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the listener (its process group: the listener and any session still open)."""
        if self.proc and self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
