"""A private sshd on a loopback port, key authentication only (Debian's openssh-server), for the
ssh tests and the bench; and the ssh options that reach it without touching the user's files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


class Unavailable(Exception):
    """No sshd here, or not root."""


class LoopbackSshd:
    def __init__(self, root: Path) -> None:
        if not Path(SSHD).exists() or shutil.which("ssh") is None or os.geteuid() != 0:
            raise Unavailable("needs root, ssh and sshd (Debian's openssh-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        keys = root / "ssh"
        keys.mkdir()
        for name in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
        (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
        config = keys / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PermitRootLogin prohibit-password\nSubsystem sftp /usr/lib/openssh/sftp-server\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
        self.key = keys / "user"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: until sshd's port answers
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise Unavailable("sshd did not start")

    def options(self, port_flag: str = "-p") -> list[str]:
        """ssh's options for this server (scp's port flag is -P): its port, our key, no host key
        kept or asked about."""
        return [
            port_flag, str(self.port), "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
        ]  # fmt: skip

    def rsh(self) -> str:
        return " ".join(["ssh", *self.options()])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
