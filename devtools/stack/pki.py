"""The secured stack's certificate authority and certificates, created under the state dir (never in git).

One CA per state dir signs two certificates: ``server`` (Mosquitto's and FerretDB's TLS listeners) and
``kafka-broker`` (Kafka's client listener, and the client certificate the broker presents to its own
controller listener, which requires one; its CN is the broker's principal there). EC P-256 keys:
generating and handshaking with them is an order of magnitude cheaper than RSA-2048, which matters
for 100,000 car connections.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools.stack.rights import KAFKA_BROKER
from devtools.stack.service import ensure_private_dir, write_private

CA_NAME = "FleetPulse local stack CA"
CA_DAYS = 3650
CERT_DAYS = 825
RENEW_DAYS = 30
"""A certificate is reissued at `stack up` once it has fewer days left than this."""

SERVER = "server"


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path

    @property
    def pem_bundle(self) -> Path:
        """Key (PKCS#8) then certificate in one file: Kafka's ``ssl.keystore.type=PEM`` layout."""
        return self.cert_file.with_suffix(".keystore.pem")


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.dir / "ca.key"

    def certificate(self, name: str) -> Certificate:
        return Certificate(self.dir / f"{name}.pem", self.dir / f"{name}.key")


def ensure_pki(directory: Path, hosts: list[str]) -> Pki:
    """Create the CA once and (re)issue both certificates when missing, expiring or not naming ``hosts``."""
    pki = Pki(directory)
    ensure_private_dir(directory)
    if not (pki.ca_file.exists() and pki.ca_key_file.exists()):
        _write_ca(pki)
    ca_key = serialization.load_pem_private_key(pki.ca_key_file.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    for name in (SERVER, KAFKA_BROKER):
        cert = pki.certificate(name)
        if _needs_issue(cert, hosts):
            _issue(cert, name, hosts, ca_cert, ca_key)
    return pki


def _write_ca(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(pki.ca_key_file, _key_pem(key))
    pki.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _needs_issue(cert: Certificate, hosts: list[str]) -> bool:
    if not (cert.cert_file.exists() and cert.key_file.exists() and cert.pem_bundle.exists()):
        return True
    current = x509.load_pem_x509_certificate(cert.cert_file.read_bytes())
    if current.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_DAYS):
        return True
    names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(map(str, _san(hosts))) != set(map(str, names))


def _issue(cert: Certificate, name: str, hosts: list[str], ca_cert: x509.Certificate, ca_key) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if name == KAFKA_BROKER else [])
    built = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem = built.public_bytes(serialization.Encoding.PEM)
    write_private(cert.key_file, _key_pem(key))
    write_private(cert.pem_bundle, _key_pem(key) + cert_pem)
    cert.cert_file.write_bytes(cert_pem)


def _san(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
