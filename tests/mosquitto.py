"""A real MQTT broker for tests: Debian's mosquitto on a free loopback port, with a config file.

    with running_broker(tmp_path) as broker:        # listening when the block starts
        ... Client("127.0.0.1", broker.port) ...
        broker.stop(); broker.start()               # the same port again: a broker outage

With `users` (name -> password) the broker requires a login (a password_file written with
mosquitto_passwd) and `acl` is written as its acl_file; with `tls` it speaks only TLS, with a
certificate for 127.0.0.1 from a throw-away CA (`broker.ca`) made with openssl.
`set_tcp_nodelay true` turns Nagle's algorithm off on the broker's sockets (with it on, a QoS 1
round trip on loopback takes ~88 ms).
Mosquitto listens within tens of milliseconds; the port is polled every 5 ms. In CI (CI=true) a
missing mosquitto fails the test; elsewhere it skips.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT = 5.0


def require_mosquitto() -> str:
    path = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if path is None:
        message = "mosquitto not found: install Debian's mosquitto (scripts/setup.sh --dev does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    def __init__(
        self,
        folder: Path,
        *,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        port: int | None = None,
        tls: bool = False,
    ) -> None:
        self.executable = require_mosquitto()
        self.folder = folder
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self.config = folder / "mosquitto.conf"
        self.log_path = folder / "mosquitto.log"
        lines = [
            # Started as root, mosquitto would switch to the user "mosquitto", who cannot read
            # the test's private folder; naming the current user keeps it (others: ignored).
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"listener {self.port} 127.0.0.1",
            "set_tcp_nodelay true",
            "persistence false",
            "max_packet_size 65536",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        self.ca: Path | None = None
        if tls:
            self.ca, certificate, key = make_certificates(folder)
            lines += [f"cafile {self.ca}", f"certfile {certificate}", f"keyfile {key}"]
        if users is None:
            lines.append("allow_anonymous true")
        else:
            passwords = folder / "passwords"
            passwords.write_text("")
            passwd = shutil.which("mosquitto_passwd")
            assert passwd is not None, "mosquitto_passwd comes with Debian's mosquitto"
            for name, password in users.items():
                subprocess.run([passwd, "-b", str(passwords), name, password], check=True)
            os.chmod(passwords, 0o600)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        if acl is not None:
            acl_path = folder / "acl"
            acl_path.write_text(acl)
            os.chmod(acl_path, 0o600)
            lines.append(f"acl_file {acl_path}")
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.ca else 'mqtt'}://{self.host}:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable, "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                self.stop()
                raise RuntimeError(f"mosquitto exited at start: {stderr}{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.1):
                    return
            except OSError:
                time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {START_TIMEOUT} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate it signed for 127.0.0.1: ca.pem, server.pem, .key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        message = "openssl not found: install Debian's openssl (scripts/setup.sh --dev does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    certificate, key, request = folder / "server.pem", folder / "server.key", folder / "server.csr"
    names = folder / "names.ext"
    names.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test CA"],
        ["req", *ec, "-keyout", key, "-out", request, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]
        + ["-out", certificate, "-days", "2", "-extfile", names],
    ):
        subprocess.run([openssl, *map(str, command)], check=True, capture_output=True)
    return ca, certificate, key


@contextmanager
def running_broker(
    folder: Path,
    *,
    users: dict[str, str] | None = None,
    acl: str | None = None,
    tls: bool = False,
) -> Iterator[Mosquitto]:
    broker = Mosquitto(folder, users=users, acl=acl, tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
