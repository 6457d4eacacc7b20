"""Rule-based forwarding: the rule authority and the PSP's control plane.

* :class:`RuleAuthority` holds an Ed25519 key (``cryptography``) and certifies rules: the
  signature covers the exact rule text (UTF-8).
* :class:`RbfPSP` is configured with the authority's **public** key. It deploys ``service.py``,
  opens circuits, and publishes rules to the sites' FIS only after verifying the authority's
  signature and that the rule parses (the service's own parser): ``bind`` for rules referenced
  by a circuit's labels (``"rule:<label>"``), ``admit`` for rules senders carry in payloads
  (``"cert:<crc32>"`` -> the verified rule text and signature, which the service compares byte
  for byte). A bad signature raises :class:`RuleRejected` and publishes nothing.

Why the control plane verifies and not the service: the service sandbox may import only
``math``, ``struct``, ``zlib`` and ``binascii``, and the Packet API offers no signature
building block, so Ed25519 cannot run on the packet path today (see the README).
"""

from __future__ import annotations

import binascii
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from examples.errors import ReasonError

from . import service as rules

__all__ = [
    "SERVICE",
    "SERVICE_SOURCE",
    "CertifiedRule",
    "RbfCircuit",
    "RbfPSP",
    "RuleAuthority",
    "RuleRejected",
    "carry",
]

SERVICE = "rbf"
SERVICE_SOURCE = Path(__file__).with_name("service.py").read_text()


class RuleRejected(ReasonError):
    """``reason``: ``bad_signature`` or ``bad_rule``."""


@dataclass(frozen=True, slots=True)
class CertifiedRule:
    text: str
    signature: bytes  #: Ed25519 over ``text.encode()``


def carry(rule: CertifiedRule, data: bytes) -> bytes:
    """A payload carrying ``rule`` ahead of ``data`` (the service's ``RBF1`` header)."""
    raw = rule.text.encode()
    return rules.HEAD.pack(rules.MAGIC, len(raw), len(rule.signature)) + raw + rule.signature + data


class RuleAuthority:
    """Certifies rules (e.g. the destination, or a trusted third party, in RBF)."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key or Ed25519PrivateKey.generate()

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def certify(self, text: str) -> CertifiedRule:
        rules.parse(text)  # refuse to sign what no site could run
        return CertifiedRule(text, self.key.sign(text.encode()))


@dataclass(frozen=True, slots=True)
class RbfCircuit:
    """A circuit at the first site with out hops ``hops`` (next hop addresses)."""

    first_hop: str
    label: int
    key: bytes
    labels: dict[str, int]  #: site public IP -> its incoming label

    def packet(self, src: str, payload: bytes) -> bytearray:
        from pcsock.wire import build_circuit_packet

        return build_circuit_packet(
            src=src, dst=self.first_hop, label=self.label, key=self.key, payload=payload
        )


class RbfPSP:
    """Deploys RBF at ``sites`` and publishes only rules the ``authority`` key certified."""

    def __init__(
        self, sites: Sequence[Any], authority: Ed25519PublicKey, *, service: str = SERVICE
    ) -> None:
        self.sites = list(sites)
        self.authority = authority
        self.service = service

    def deploy(self) -> None:
        for s in self.sites:
            s.deploy(self.service, SERVICE_SOURCE)
            s.fis_put(self.service, "site", s.name)

    def verify(self, rule: CertifiedRule) -> None:
        """Raise :class:`RuleRejected` unless ``rule`` is signed by the authority and parses."""
        try:
            self.authority.verify(rule.signature, rule.text.encode())
        except InvalidSignature:
            raise RuleRejected("bad_signature", "not signed by the configured authority") from None
        try:
            rules.parse(rule.text)
        except ValueError as exc:
            raise RuleRejected("bad_rule", str(exc)) from None

    def admit(self, rule: CertifiedRule) -> str:
        """Let packets carry ``rule`` (after verification); returns its FIS key."""
        self.verify(rule)
        raw = rule.text.encode()
        key = rules.cert_key(raw, rule.signature)
        value = {"rule": rule.text, "sig": binascii.hexlify(rule.signature).decode()}
        for s in self.sites:
            s.fis_put(self.service, key, value)
        return key

    def connect(self, first: Any, hops: Sequence[Any], destination: str) -> RbfCircuit:
        """A circuit at ``first`` whose out hops are each site in ``hops`` (which then delivers
        to ``destination``) and ``destination`` itself: the rule chooses among them."""
        labels = {s.public_ip: s.allocate_label(self.service) for s in [first, *hops]}
        keys = {ip: secrets.token_bytes(16) for ip in labels}
        out: list[tuple[int, str, bytes | None]] = []
        for s in hops:
            s.install(
                labels[s.public_ip], self.service, keys[s.public_ip], [(0, destination, None)]
            )
            out.append((labels[s.public_ip], s.public_ip, keys[s.public_ip]))
        out.append((0, destination, None))
        first.install(labels[first.public_ip], self.service, keys[first.public_ip], out)
        return RbfCircuit(first.public_ip, labels[first.public_ip], keys[first.public_ip], labels)

    def bind(self, circuit: RbfCircuit, rule: CertifiedRule) -> None:
        """Make ``rule`` the rule of ``circuit``'s labels at every site (after verification)."""
        self.verify(rule)
        for s in self.sites:
            label = circuit.labels.get(s.public_ip)
            if label is not None:
                s.fis_put(self.service, f"rule:{label}", {"rule": rule.text})
