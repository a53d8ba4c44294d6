"""Throwaway certificates for the TLS tests, made with the ``openssl`` command-line tool
(installed by ``scripts/setup.sh``) at test time, so no key material lives in the repository."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    """A CA and a server certificate for 127.0.0.1 it signed, plus an unrelated second CA
    (a client trusting only that one must be refused)."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary is not None, "openssl not on PATH: run scripts/setup.sh (apt-get install openssl)"
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (key, certificate) valid for a day."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    return key, cert


def make_certificates(directory: Path) -> Certificates:
    """CA + server certificate with an IP SAN 127.0.0.1 (so hostname checks pass)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(directory, "omnistream-test-ca")
    _, other_ca = make_ca(directory, "some-other-ca")
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return Certificates(ca=ca_cert, server_cert=cert, server_key=key, other_ca=other_ca)
