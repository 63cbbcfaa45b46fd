"""build_client_ssl_context against real TLS servers on loopback (Security WP §2.4, §2.5)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chargepoint.config import TlsSettings
from chargepoint.devtools.pki import Pki
from chargepoint.transport.tls import ELB_TLS12_CIPHERS, build_client_ssl_context

HANDSHAKE_TIMEOUT_S = 10.0


def server_context(p: Pki, *, ciphers: str | None = None, minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
                   maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3, client_ca: Pki | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(p.server_cert, p.server_key)
    ctx.minimum_version, ctx.maximum_version = minimum, maximum
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca.ca_cert)
    return ctx


class TlsServer:
    def __init__(self) -> None:
        self.port = 0
        self.peer_certs: list[dict[str, Any] | None] = []


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[TlsServer]:
    info = TlsServer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        info.peer_certs.append(ssl_object.getpeercert() if ssl_object is not None else None)
        writer.write(b"hello")
        with contextlib.suppress(OSError):
            await writer.drain()
            await reader.read(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        await server.wait_closed()


async def handshake(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> ssl.SSLObject:
    """Connect, finish the handshake and read the server's first bytes (TLS 1.3 reports a
    refused client certificate only then)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host), HANDSHAKE_TIMEOUT_S)
    try:
        data = await asyncio.wait_for(reader.read(5), HANDSHAKE_TIMEOUT_S)
        if data != b"hello":
            raise ConnectionError("server closed the connection")
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object is not None
        return ssl_object
    finally:
        writer.close()


def charger_ctx(p: Pki, *, allow_tls13: bool = True, client: bool = False) -> ssl.SSLContext:
    tls = TlsSettings(ca_file=p.ca_cert, allow_tls13=allow_tls13,
                      client_cert_file=p.client_cert if client else None,
                      client_key_file=p.client_key if client else None)
    return build_client_ssl_context(tls)


def permissive_ctx(p: Pki, ciphers: str, minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A control client: proves the server really accepts the handshake we expect refused."""
    ctx = ssl.create_default_context(cafile=str(p.ca_cert))
    ctx.minimum_version = minimum
    ctx.set_ciphers(ciphers)
    return ctx


def test_tls12_suites_are_exactly_the_elb_2018_06_policy_in_order(pki: Pki) -> None:
    ctx = charger_ctx(pki)
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert tls12 == list(ELB_TLS12_CIPHERS)
    assert len(ELB_TLS12_CIPHERS) == 18
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


@pytest.mark.asyncio
@pytest.mark.parametrize("suite", ELB_TLS12_CIPHERS)
async def test_handshake_ok_with_each_policy_suite_over_tls12(pki: Pki, rsa_pki: Pki, suite: str) -> None:
    # ECDSA suites need the EC certificate, the others an RSA one.
    server_pki = pki if "ECDSA" in suite else rsa_pki
    ctx = server_context(server_pki, ciphers=suite, maximum=ssl.TLSVersion.TLSv1_2)
    async with tls_server(ctx) as srv:
        ssl_object = await handshake(srv.port, charger_ctx(server_pki))
    assert ssl_object.version() == "TLSv1.2"
    cipher = ssl_object.cipher()
    assert cipher is not None and cipher[0] == suite


@pytest.mark.asyncio
async def test_suite_outside_the_policy_is_refused_a00_fr_322(rsa_pki: Pki) -> None:
    suite = "ECDHE-RSA-CHACHA20-POLY1305"
    ctx = server_context(rsa_pki, ciphers=suite, maximum=ssl.TLSVersion.TLSv1_2)
    async with tls_server(ctx) as srv:
        control = await handshake(srv.port, permissive_ctx(rsa_pki, suite))
        assert control.cipher() is not None and control.cipher()[0] == suite  # type: ignore[index]
        # The server finds no shared suite and drops the handshake (alert or reset).
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(srv.port, charger_ctx(rsa_pki))


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls10_and_tls11_servers_are_refused_a00_fr_315(rsa_pki: Pki, version: ssl.TLSVersion) -> None:
    ctx = server_context(rsa_pki, ciphers="DEFAULT:@SECLEVEL=0", minimum=version, maximum=version)
    async with tls_server(ctx) as srv:
        try:
            control = await handshake(srv.port, permissive_ctx(rsa_pki, "DEFAULT:@SECLEVEL=0", minimum=version))
        except (ssl.SSLError, ConnectionError):
            pytest.skip(f"this OpenSSL build cannot speak {version.name} at all")
        assert control.version() == {"TLSv1": "TLSv1", "TLSv1_1": "TLSv1.1"}[version.name]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(srv.port, charger_ctx(rsa_pki))


@pytest.mark.asyncio
async def test_unknown_ca_is_refused_a00_fr_307(pki: Pki, other_ca_pki: Pki) -> None:
    async with tls_server(server_context(other_ca_pki)) as srv:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await handshake(srv.port, charger_ctx(pki))
    assert "unable to get local issuer certificate" in (info.value.verify_message or "")


@pytest.mark.asyncio
async def test_wrong_host_name_is_refused_a00_fr_308(otherhost_pki: Pki) -> None:
    async with tls_server(server_context(otherhost_pki)) as srv:
        ok = await handshake(srv.port, charger_ctx(otherhost_pki), host="otherhost")  # same cert, right name
        assert ok.version() is not None
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await handshake(srv.port, charger_ctx(otherhost_pki), host="localhost")
    assert "Hostname mismatch" in (info.value.verify_message or "")


@pytest.mark.asyncio
async def test_compression_is_off_a00_fr_320(pki: Pki) -> None:
    ctx = charger_ctx(pki)
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    async with tls_server(server_context(pki, maximum=ssl.TLSVersion.TLSv1_2)) as srv:
        ssl_object = await handshake(srv.port, ctx)
    assert ssl_object.compression() is None


@pytest.mark.asyncio
async def test_tls13_used_when_allowed(pki: Pki) -> None:
    async with tls_server(server_context(pki, minimum=ssl.TLSVersion.TLSv1_3)) as srv:
        assert (await handshake(srv.port, charger_ctx(pki, allow_tls13=True))).version() == "TLSv1.3"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(srv.port, charger_ctx(pki, allow_tls13=False))


@pytest.mark.asyncio
@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_client_certificate_sent_for_security_profile_3_a00_fr_402(pki: Pki, maximum: ssl.TLSVersion) -> None:
    async with tls_server(server_context(pki, client_ca=pki, maximum=maximum)) as srv:
        await handshake(srv.port, charger_ctx(pki, client=True))
        peer = srv.peer_certs[-1]
        assert peer is not None
        subject = dict(x[0] for x in peer["subject"])
        assert subject["commonName"] == "CP-0001"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(srv.port, charger_ctx(pki, client=False))
