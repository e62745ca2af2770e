"""A private certificate authority and the broker's TLS certificate for the secure local stack.

Files (in the `tls/` folder of the Kafka runtime folder; keys are written 0600):
    ca.crt       the CA certificate clients trust (`KEEL_KAFKA_SSL_CAFILE`, `ssl.ca.location`)
    ca.key       the CA's private key: issues broker certificates, never leaves the folder
    broker.pem   the broker's PKCS#8 private key followed by its certificate and the CA certificate,
                 read by Kafka as a PEM keystore (`ssl.keystore.type=PEM`, KIP-651)
    broker.crt   the broker's certificate alone (for inspection and rotation checks)

Keys are ECDSA P-256: quick to generate and accepted by the JVM, OpenSSL (librdkafka) and Python's ssl.
Certificates carry both serverAuth and clientAuth usages because the broker presents the same
certificate on its own controller connections (mutual TLS, see `deploy/local/secure_kafka.py`).
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

from keel.errors import ConfigurationError

__all__ = [
    "BROKER_COMMON_NAME",
    "CertificateInfo",
    "TlsFiles",
    "certificate_info",
    "ensure_tls_files",
    "issue_broker_certificate",
]

BROKER_COMMON_NAME = "keel-broker"
_CA_COMMON_NAME = "Keel local stack CA"
_ORGANIZATION = "Keel local stack"
_CA_LIFETIME = dt.timedelta(days=5 * 365)
_BROKER_LIFETIME = dt.timedelta(days=90)
# A certificate closer than this to its end is replaced at the next `up` (and by `rotate-certificate`).
RENEW_BEFORE = dt.timedelta(days=14)
# Clocks of clients may lag a little behind ours; a certificate valid from "now" would be rejected by them.
_BACKDATE = dt.timedelta(minutes=5)
_DEFAULT_DNS = ("localhost",)
_DEFAULT_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the broker's key material live."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM) every client trusts."""
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA private key (PEM, 0600)."""
        return self.folder / "ca.key"

    @property
    def broker_keystore(self) -> Path:
        """Broker key + certificate chain (PEM, 0600): Kafka's `ssl.keystore.location`."""
        return self.folder / "broker.pem"

    @property
    def broker_cert(self) -> Path:
        """The broker certificate alone (PEM)."""
        return self.folder / "broker.crt"

    def exist(self) -> bool:
        """True when every file is present."""
        return all(p.exists() for p in (self.ca_cert, self.ca_key, self.broker_keystore, self.broker_cert))


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator checks about a certificate."""

    subject: str
    issuer: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]

    def expires_within(self, margin: dt.timedelta, now: dt.datetime | None = None) -> bool:
        """True when the certificate ends within `margin` of `now`."""
        return self.not_after - margin <= (now or _now())

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": f"{self.serial:x}",
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "sha256": self.sha256,
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
        }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by its owner only, without a window where it is world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    # rename is atomic: the broker reloading the keystore never sees a half-written file.
    temporary.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8 without encryption: Kafka's PEM keystore needs PKCS#8, and a password stored beside the key
    # in server.properties would protect nothing; the file mode does.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_ca(files: TlsFiles, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(_CA_COMMON_NAME)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(files.ca_key, _key_pem(key))
    _write_public(files.ca_cert, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    certificate = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{files.ca_key}: expected the EC key this stack generates")
    return certificate, key


def issue_broker_certificate(
    files: TlsFiles,
    *,
    dns_names: tuple[str, ...] = _DEFAULT_DNS,
    ip_addresses: tuple[str, ...] = _DEFAULT_IPS,
    now: dt.datetime | None = None,
) -> CertificateInfo:
    """A new broker key and certificate signed by the stack's CA (created first if missing).

    The subject and SANs stay the same across rotations: Kafka refuses a reloaded keystore whose
    distinguished name or subject alternative names differ from the running one.
    """
    moment = now or _now()
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_certificate, ca_key = _load_ca(files)
    else:
        ca_certificate, ca_key = _new_ca(files, moment)
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(BROKER_COMMON_NAME))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - _BACKDATE)
        .not_valid_after(min(moment + _BROKER_LIFETIME, ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_certificate.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    _write_private(files.broker_keystore, _key_pem(key) + pem + ca_certificate.public_bytes(serialization.Encoding.PEM))
    _write_public(files.broker_cert, pem)
    return certificate_info(files.broker_cert)


def ensure_tls_files(folder: Path, *, now: dt.datetime | None = None) -> TlsFiles:
    """The CA and broker certificate in `folder`: created when missing, the broker's renewed near its end."""
    files = TlsFiles(folder)
    moment = now or _now()
    if not files.exist() or certificate_info(files.broker_cert).expires_within(RENEW_BEFORE, moment):
        issue_broker_certificate(files, now=moment)
    return files


def certificate_info(path: Path) -> CertificateInfo:
    """Subject, issuer, validity, fingerprint and SANs of the (first) certificate in a PEM file."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"{path}: not a readable PEM certificate ({error})") from error
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return CertificateInfo(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        serial=certificate.serial_number,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        dns_names=dns,
        ip_addresses=ips,
    )
