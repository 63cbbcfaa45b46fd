"""Fixtures for the transport tests: throw-away PKIs (real certificates, loopback only)."""

from __future__ import annotations

import pytest

from chargepoint.devtools.pki import Pki, ensure_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA + ECDSA server certificate for localhost / 127.0.0.1 + a client certificate."""
    return ensure_pki(tmp_path_factory.mktemp("pki"), client_cn="CP-0001")


@pytest.fixture(scope="session")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("pki-rsa"), rsa_server=True)


@pytest.fixture(scope="session")
def other_ca_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA the charger does not trust."""
    return ensure_pki(tmp_path_factory.mktemp("pki-other"))


@pytest.fixture(scope="session")
def otherhost_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A server certificate issued for "otherhost" only."""
    return ensure_pki(tmp_path_factory.mktemp("pki-otherhost"), hosts=("otherhost",))
