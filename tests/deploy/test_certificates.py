"""The secure stack's CA and broker certificate: chain, names, usages, file modes, renewal."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local.certificates import (
    RENEW_BEFORE,
    TlsFiles,
    certificate_info,
    ensure_tls_files,
    issue_broker_certificate,
)
from keel.errors import ConfigurationError


def test_the_broker_certificate_chains_to_the_ca_and_names_loopback(tmp_path: Path) -> None:
    files = ensure_tls_files(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    broker = x509.load_pem_x509_certificate(files.broker_cert.read_bytes())
    broker.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # Python's own TLS stack accepts the pair for 127.0.0.1 (hostname checking on, as clients do).
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.broker_keystore)
    assert context.check_hostname
    assert server.get_ca_certs() == []  # the chain is the server's, not a trust store


def test_the_keystore_is_a_pkcs8_key_then_the_chain_and_private_files_are_owner_only(tmp_path: Path) -> None:
    files = ensure_tls_files(tmp_path / "tls")
    pem = files.broker_keystore.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted: what Kafka's PEM store reads
    assert pem.count("-----BEGIN CERTIFICATE-----") == 2
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    broker = x509.load_pem_x509_certificate(files.broker_cert.read_bytes())
    assert key.public_key() == broker.public_key()
    for private in (files.broker_keystore, files.ca_key):
        assert private.stat().st_mode & 0o777 == 0o600, private
    assert not list(files.folder.glob("*.tmp"))


def test_a_second_ensure_keeps_everything_and_renewal_keeps_the_ca_and_subject(tmp_path: Path) -> None:
    files = ensure_tls_files(tmp_path / "tls")
    first = certificate_info(files.broker_cert)
    ca_before = files.ca_cert.read_bytes()
    assert certificate_info(ensure_tls_files(files.folder).broker_cert) == first
    near_end = first.not_after - RENEW_BEFORE + dt.timedelta(hours=1)
    ensure_tls_files(files.folder, now=near_end)
    renewed = certificate_info(files.broker_cert)
    assert renewed.serial != first.serial
    assert (renewed.subject, renewed.dns_names, renewed.ip_addresses) == (
        first.subject,
        first.dns_names,
        first.ip_addresses,
    )
    assert renewed.not_after > first.not_after
    assert files.ca_cert.read_bytes() == ca_before


def test_rotation_issues_a_new_key(tmp_path: Path) -> None:
    files = ensure_tls_files(tmp_path / "tls")
    key_before = files.broker_keystore.read_text().split("-----END PRIVATE KEY-----")[0]
    info = issue_broker_certificate(files)
    assert files.broker_keystore.read_text().split("-----END PRIVATE KEY-----")[0] != key_before
    assert info.sha256 == certificate_info(files.broker_cert).sha256
    assert info.expires_within(dt.timedelta(days=91))
    assert not info.expires_within(dt.timedelta(days=80))


def test_an_unreadable_certificate_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broker.crt"
    broken.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="not a readable PEM certificate"):
        certificate_info(broken)
    with pytest.raises(ConfigurationError, match="not a readable PEM certificate"):
        certificate_info(tmp_path / "missing.crt")
    assert not TlsFiles(tmp_path).exist()
