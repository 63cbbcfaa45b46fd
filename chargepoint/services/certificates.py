"""The certificate logic of the Security Whitepaper extensions (services/security.py), pure.

Everything here needs `cryptography` (~7 MB of RSS once imported), so the security
service imports this module only when a certificate is really handled:
InstallCertificate, GetInstalledCertificateIds / DeleteCertificate with certificates
installed, CertificateSigned, SignCertificate, signed firmware, and reading the
certificate files once there are any. A charger that never saw a certificate never
loads it (idle RSS budget of the daemon).

Hash data (Security WP §6.1, edition 3): issuerNameHash over the DER of the
certificate's issuer name, issuerKeyHash over the issuer's public key bits (RFC 6960
CertID), serialNumber in hex without leading zeroes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

HASH_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}
MAX_CHAIN_DEPTH = 5


def load_certificates(pem: str | bytes) -> list[x509.Certificate]:
    """The PEM certificates in `pem`; ValueError when there is none or one is broken."""
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificates(data)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def to_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def validity_problem(cert: x509.Certificate, now: dt.datetime | None) -> str | None:
    """Why `cert` is not valid at `now` (None: valid, or the time is not known)."""
    if now is None:
        return None
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
    if now > cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    return None


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """`issuer` signed `cert` (names match and the signature verifies)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(chain: list[x509.Certificate], roots: list[x509.Certificate], now: dt.datetime | None,
                 *, allow_intermediates: bool = True) -> str | None:
    """None when chain[0] chains up to one of `roots` (through CA certificates of chain[1:]
    if allowed), every certificate valid at `now`; otherwise the reason."""
    if not chain:
        return "no certificate"
    if not roots:
        return "no trusted root certificate installed"
    current, pool = chain[0], list(chain[1:])
    for _ in range(MAX_CHAIN_DEPTH):
        problem = validity_problem(current, now)
        if problem is not None:
            return f"{current.subject.rfc4514_string()}: {problem}"
        for root in roots:
            if is_ca(root) and issued_by(current, root):
                root_problem = validity_problem(root, now)
                return None if root_problem is None else f"root {root.subject.rfc4514_string()}: {root_problem}"
        if not allow_intermediates:
            return "not issued by a trusted root certificate"
        issuer = next((c for c in pool if is_ca(c) and issued_by(current, c)), None)
        if issuer is None:
            return "not issued by a trusted root certificate"
        pool.remove(issuer)
        current = issuer
    return "certificate chain too long"


def certificate_hash_data(cert: x509.Certificate, issuer: x509.Certificate,
                          algorithm: str = "SHA256") -> dict[str, str]:
    """CertificateHashDataType (Security WP §6.1, edition 3 / RFC 6960 CertID)."""
    hash_cls = HASH_ALGORITHMS[algorithm]
    digest = hashes.Hash(hash_cls())
    digest.update(cert.issuer.public_bytes())        # DER of the issuer name field
    name_hash = digest.finalize()
    # The issuer key hash as OCSP computes it: over the subjectPublicKey bits of the issuer.
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hash_cls()).build()
    return {
        "hashAlgorithm": algorithm,
        "issuerNameHash": name_hash.hex(),
        "issuerKeyHash": request.issuer_key_hash.hex(),
        "serialNumber": format(cert.serial_number, "X"),
    }


def hash_data_matches(ours: dict[str, str], theirs: dict[str, Any]) -> bool:
    """Equal as CiStrings; serial numbers compared without leading zeroes."""
    def serial(text: Any) -> str:
        return str(text).upper().lstrip("0") or "0"

    return (ours["hashAlgorithm"] == theirs.get("hashAlgorithm")
            and ours["issuerNameHash"].lower() == str(theirs.get("issuerNameHash", "")).lower()
            and ours["issuerKeyHash"].lower() == str(theirs.get("issuerKeyHash", "")).lower()
            and serial(ours["serialNumber"]) == serial(theirs.get("serialNumber", "")))


def make_csr(common_name: str, organization: str) -> tuple[bytes, str]:
    """(private key PEM, CSR PEM): EC P-256 (A00.FR.503), signed with SHA-256 (RFC 2986)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def load_private_key(pem: bytes) -> Any:
    """The private key in `pem` (unencrypted); ValueError/TypeError when it is not one."""
    return serialization.load_pem_private_key(pem, password=None)


def holds_key(cert: x509.Certificate, private_key: Any) -> bool:
    """`cert` certifies the public half of `private_key`."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == private_key.public_key().public_bytes(*fmt))


def common_names(cert: x509.Certificate) -> list[Any]:
    return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def has_organization(cert: x509.Certificate) -> bool:
    return bool(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


def signature_valid(cert: x509.Certificate, sha256_digest: bytes, signature_b64: str) -> bool:
    """The base64 signature over a file whose SHA-256 is `sha256_digest`, made with the key of
    `cert`: ECDSA, or RSA-PSS (L01.FR.04) / PKCS#1 v1.5 for an RSA key."""
    try:
        signature = base64.b64decode("".join(signature_b64.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    prehashed = utils.Prehashed(hashes.SHA256())
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, sha256_digest, ec.ECDSA(prehashed))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            for scheme in (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                           padding.PKCS1v15()):
                try:
                    key.verify(signature, sha256_digest, scheme, prehashed)
                    return True
                except InvalidSignature:
                    continue
    except (InvalidSignature, ValueError):
        return False
    return False
