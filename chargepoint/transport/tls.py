"""The client TLS context for the central-system link (Security WP §2.4, §2.5).

TLS 1.2 is limited to the suites of AWS ELBSecurityPolicy-TLS-1-2-Ext-2018-06
(ev.energy requirements; field-notes section 3). TLS 1.3 may be allowed next to it:
its suites are all AEAD and Python cannot restrict them per context anyway.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from chargepoint.config import TlsSettings

# ELBSecurityPolicy-TLS-1-2-Ext-2018-06, OpenSSL names, in the policy's order.
ELB_TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES128-SHA256",
    "AES128-SHA",
    "AES256-GCM-SHA384",
    "AES256-SHA256",
    "AES256-SHA",
)


def build_client_ssl_context(tls: TlsSettings, *, cert_file: Path | None = None,
                             key_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context. The client certificate (security profile 3,
    A00.FR.402) comes from `cert_file`/`key_file`, else from the settings."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # A00.FR.307/308: verify the certification path and the host name.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    # A00.FR.312/315: TLS 1.2 or newer only.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if tls.allow_tls13 else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(ELB_TLS12_CIPHERS))
    # A00.FR.320: no TLS compression (CRIME); no renegotiation.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    cert_file = cert_file or tls.client_cert_file
    key_file = key_file or tls.client_key_file
    if cert_file is not None:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=None if key_file is None else str(key_file))
    return ctx
