"""A small certificate authority for the control API's TLS (tests, testbeds, a first site).

``pcsite pki ca --out DIR`` writes ``ca.crt``/``ca.key``; ``pcsite pki cert --ca DIR --name
198.18.0.1 [--name site-a.example] --out DIR`` writes ``site.crt``/``site.key`` signed by it,
with every ``--name`` as a subject alternative name (IP addresses as IP SANs). Put the site's
pair in ``[tls]`` and give clients ``ca.crt`` (``ControlClient(ca_file=...)``). Keys are ECDSA
P-256; key files are written mode 0600. An operator with a real CA uses that instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pem", "issue", "main", "make_ca"]


@dataclass(frozen=True, slots=True)
class Pem:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes

    def write(self, directory: str | Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.crt`` and ``<stem>.key`` (0600) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        crt, key = d / f"{stem}.crt", d / f"{stem}.key"
        crt.write_bytes(self.cert)
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(self.key)
        return crt, key

    @classmethod
    def read(cls, directory: str | Path, stem: str) -> Pem:
        d = Path(directory)
        return cls((d / f"{stem}.crt").read_bytes(), (d / f"{stem}.key").read_bytes())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(days: float) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_ca(name: str = "PacketCloud control CA", *, days: float = 365) -> Pem:
    """A self-signed CA certificate (may sign end-entity certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(ca: Pem, names: Sequence[str], *, days: float = 90) -> Pem:
    """A server certificate for ``names`` (IP addresses and/or DNS names) signed by ``ca``."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key made by pcsite_lite.pki")
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def main(argv: list[str] | None = None) -> int:
    """``pcsite pki ca|cert``."""
    ap = argparse.ArgumentParser(prog="pcsite pki", description="control API certificates")
    sub = ap.add_subparsers(dest="what", required=True)
    ca = sub.add_parser("ca", help="make a CA: DIR/ca.crt, DIR/ca.key")
    ca.add_argument("--out", required=True)
    ca.add_argument("--name", default="PacketCloud control CA")
    ca.add_argument("--days", type=float, default=365)
    cert = sub.add_parser("cert", help="make a site certificate: DIR/site.crt, DIR/site.key")
    cert.add_argument("--ca", required=True, help="directory with ca.crt and ca.key")
    cert.add_argument(
        "--name", action="append", required=True,
        help="an IP address or DNS name clients reach the site by (repeatable)",
    )  # fmt: skip
    cert.add_argument("--out", required=True)
    cert.add_argument("--stem", default="site")
    cert.add_argument("--days", type=float, default=90)
    args = ap.parse_args(argv)
    try:
        if args.what == "ca":
            paths = make_ca(args.name, days=args.days).write(args.out, "ca")
        else:
            pem = issue(Pem.read(args.ca, "ca"), args.name, days=args.days)
            paths = pem.write(args.out, args.stem)
    except (OSError, ValueError) as exc:
        print(f"pcsite pki: {exc}", file=sys.stderr)
        return 2
    print(" ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
