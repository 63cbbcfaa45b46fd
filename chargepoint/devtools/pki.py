"""A throw-away PKI for the bundled central system and the tests.

Generates a CA, a server certificate for localhost / 127.0.0.1 and, when asked,
a client certificate (security profile 3). Private keys are written mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "chargepoint test PKI")])


def make_ca(cn: str = "chargepoint test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str, *,
          hosts: tuple[str, ...] = (), client: bool = False,
          rsa: bool = False, days: int = 825) -> tuple[x509.Certificate, object]:
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_mod

    key: object
    key = rsa_mod.generate_private_key(65537, 2048) if rsa else ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())  # EC or RSA key
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert, key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_pki(directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
               client_cn: str | None = None, rsa_server: bool = False) -> Pki:
    """Create (once) a CA and certificates under `directory`; reuse them afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_p, ca_key_p = directory / "ca.pem", directory / "ca.key"
    srv_cert_p, srv_key_p = directory / "server.pem", directory / "server.key"
    if not (ca_cert_p.exists() and ca_key_p.exists()):
        ca_cert, ca_key = make_ca()
        ca_cert_p.write_bytes(_pem(ca_cert))
        _write_key(ca_key_p, ca_key)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_p.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key_p.read_bytes(), None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    ca_key = loaded
    if not (srv_cert_p.exists() and srv_key_p.exists()):
        cert, key = issue(ca_cert, ca_key, hosts[0], hosts=hosts, rsa=rsa_server)
        srv_cert_p.write_bytes(_pem(cert))
        _write_key(srv_key_p, key)  # type: ignore[arg-type]
    client_cert_p = client_key_p = None
    if client_cn is not None:
        client_cert_p, client_key_p = directory / "client.pem", directory / "client.key"
        if not (client_cert_p.exists() and client_key_p.exists()):
            cert, key = issue(ca_cert, ca_key, client_cn, client=True)
            client_cert_p.write_bytes(_pem(cert))
            _write_key(client_key_p, key)  # type: ignore[arg-type]
    return Pki(ca_cert_p, ca_key_p, srv_cert_p, srv_key_p, client_cert_p, client_key_p)
