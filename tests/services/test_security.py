"""Pure certificate and signature logic of services/security.py (Security WP §2.6, §6.1, A02, L01)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from chargepoint.devtools.pki import issue, make_ca
from chargepoint.services.security import (
    certificate_hash_data,
    hash_data_matches,
    make_csr,
    signature_valid,
    verify_chain,
)

NOW = dt.datetime.now(dt.UTC)


def _key_bits(cert: x509.Certificate) -> bytes:
    """subjectPublicKey bits of an EC P-256 key: the SPKI ends with them (65 bytes, uncompressed point)."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der[-65:]


def _sub_ca(root: x509.Certificate, root_key: Any, cn: str) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(root.subject).public_key(key.public_key()).serial_number(0xFFF)
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256()))
    return cert, key


def test_hash_data_is_over_the_issuer_name_and_the_issuer_key_and_the_serial_is_hex_without_zeroes() -> None:
    """§6.1 edition 3 / RFC 6960: issuerNameHash over the DER issuer name of the certificate,
    issuerKeyHash over the issuer's public key bits, serial 4095 -> "FFF"."""
    root, root_key = make_ca("root")
    sub, _ = _sub_ca(root, root_key, "sub CA")
    data = certificate_hash_data(sub, root)
    assert data == {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(root.subject.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(_key_bits(root)).hexdigest(),
        "serialNumber": "FFF",
    }
    assert len(certificate_hash_data(sub, root, "SHA512")["issuerKeyHash"]) == 128


def test_hash_data_matching_ignores_case_and_leading_zeroes_but_not_the_algorithm() -> None:
    root, _ = make_ca("root")
    ours = certificate_hash_data(root, root)
    theirs = {**ours, "issuerNameHash": ours["issuerNameHash"].upper(), "serialNumber": "00" + ours["serialNumber"]}
    assert hash_data_matches(ours, theirs)
    assert not hash_data_matches(ours, {**theirs, "hashAlgorithm": "SHA384"})
    assert not hash_data_matches(ours, {**theirs, "serialNumber": "1"})


def test_chain_verification_through_an_intermediate_and_its_failures() -> None:
    root, root_key = make_ca("root")
    sub, sub_key = _sub_ca(root, root_key, "sub CA")
    leaf, _ = issue(sub, sub_key, "CP-1")
    assert verify_chain([leaf, sub], [root], NOW) is None
    assert verify_chain([leaf, sub], [root], NOW, allow_intermediates=False) is not None
    assert verify_chain([leaf], [root], NOW) == "not issued by a trusted root certificate"
    other, _ = make_ca("other root")
    assert verify_chain([leaf, sub], [other], NOW) is not None
    assert verify_chain([leaf, sub], [], NOW) == "no trusted root certificate installed"
    later = NOW + dt.timedelta(days=60)   # the sub CA expires after 30 days
    problem = verify_chain([leaf, sub], [root], later)
    assert problem is not None and "expired" in problem
    assert verify_chain([leaf, sub], [root], None) is None   # time unknown: validity not judged


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.mark.parametrize("scheme", ["ecdsa", "rsa-pss", "rsa-pkcs1v15"])
def test_firmware_signature_schemes(scheme: str) -> None:
    """L01.FR.04: the signature over the whole file, SHA-256; RSA-PSS, ECDSA, or PKCS#1 v1.5."""
    root, root_key = make_ca("maker")
    cert, key = issue(root, root_key, "signing", rsa=scheme != "ecdsa")
    data = b"firmware image" * 1000
    if scheme == "ecdsa":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        pad: Any = (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
                    if scheme == "rsa-pss" else padding.PKCS1v15())
        raw = key.sign(data, pad, hashes.SHA256())
    signature = base64.b64encode(raw).decode()
    assert signature_valid(cert, _digest(data), signature)
    assert not signature_valid(cert, _digest(data + b"x"), signature)
    assert not signature_valid(cert, _digest(data), "not base64 !")
    other, _ = issue(root, root_key, "someone else", rsa=scheme != "ecdsa")
    assert not signature_valid(other, _digest(data), signature)


def test_csr_names_the_charge_point_and_the_cpo_and_is_self_signed() -> None:
    """A02.FR.03 / A02.FR.13: RFC 2986 CSR, PEM; O = CpoName; the key is at least 224 bits (A00.FR.503)."""
    key_pem, csr_pem = make_csr("CP-0001", "Example CPO")
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "CP-0001"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example CPO"
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 224
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == csr.public_key().public_bytes(*spki)
