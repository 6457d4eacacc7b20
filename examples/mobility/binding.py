"""Authenticated binding updates: the mobile router tells the PSP its new care-of address.

NEMO (RFC 3963) binds a mobile network prefix to the mobile router's care-of address; here the
binding lives in the mobility service's FIS (paper §2.6.1) and the mobile router changes it
with a signed request. The message is Ed25519-signed (``cryptography``; a forged or altered
update fails verification) and carries a 64-bit sequence number that must grow with every
update of a prefix (a replayed or reordered old update is refused), as in RFC 6275 §9.5.1.

Wire layout (85 bytes, network order)::

    0..3   magic "PCBU"
    4..7   mobile network prefix (IPv4 network address)
    8      prefix length
    9..12  care-of address
    13..20 sequence number
    21..84 Ed25519 signature over b"PacketCloud binding update v1" + bytes 0..20

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.generate()
>>> reg = BindingRegistry()
>>> reg.register("198.19.1.0/24", key.public_key())
>>> b = reg.apply(sign_update(key, "198.19.1.0/24", "198.18.200.2", seq=1))
>>> (b.prefix, b.care_of, b.seq)
('198.19.1.0/24', '198.18.200.2', 1)
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from examples.errors import ReasonError

__all__ = [
    "UPDATE_LEN",
    "Binding",
    "BindingError",
    "BindingRegistry",
    "decode_update",
    "sign_update",
]

MAGIC: Final = b"PCBU"
_BODY: Final = struct.Struct("!4sIBIQ")
SIG_LEN: Final = 64
UPDATE_LEN: Final = _BODY.size + SIG_LEN  # 85
_CONTEXT: Final = b"PacketCloud binding update v1"


class BindingError(ReasonError):
    """A refused binding update; ``reason`` is machine-readable."""


@dataclass(frozen=True, slots=True)
class Binding:
    """Mobile network ``prefix`` is currently reached at ``care_of`` (update number ``seq``)."""

    prefix: str
    care_of: str
    seq: int


def _net(prefix: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(prefix)
    except ValueError as exc:
        raise BindingError("bad_prefix", str(exc)) from exc


def sign_update(key: Ed25519PrivateKey, prefix: str, care_of: str, *, seq: int) -> bytes:
    """The mobile router's side: a signed update binding ``prefix`` to ``care_of``."""
    net = _net(prefix)
    if not 0 <= seq < 1 << 64:
        raise BindingError("bad_seq", "sequence numbers are 64-bit")
    body = _BODY.pack(
        MAGIC,
        int(net.network_address),
        net.prefixlen,
        int(ipaddress.IPv4Address(care_of)),
        seq,
    )
    return body + key.sign(_CONTEXT + body)


def decode_update(raw: bytes) -> tuple[Binding, bytes, bytes]:
    """(binding, signed body, signature) of an update, without checking the signature."""
    if len(raw) != UPDATE_LEN:
        raise BindingError("bad_length", f"{len(raw)} bytes, want {UPDATE_LEN}")
    magic, net, plen, coa, seq = _BODY.unpack_from(raw)
    if magic != MAGIC:
        raise BindingError("bad_magic")
    if plen > 32:
        raise BindingError("bad_prefix", f"/{plen}")
    try:
        prefix = str(ipaddress.IPv4Network((net, plen)))
    except ValueError as exc:
        raise BindingError("bad_prefix", str(exc)) from exc
    body = raw[: _BODY.size]
    return Binding(prefix, str(ipaddress.IPv4Address(coa)), seq), body, raw[_BODY.size :]


class BindingRegistry:
    """The PSP's verifier: registered keys per prefix and the last accepted sequence number."""

    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._seq: dict[str, int] = {}

    def register(self, prefix: str, public_key: Ed25519PublicKey) -> None:
        """Bind ``prefix`` to the mobile router's public key (at sign-up)."""
        self._keys[str(_net(prefix))] = public_key

    def last_seq(self, prefix: str) -> int | None:
        return self._seq.get(str(_net(prefix)))

    def apply(self, raw: bytes) -> Binding:
        """Verify an update; on success remember its sequence number and return the binding.

        Raises :class:`BindingError` with reason ``unknown_prefix``, ``bad_signature`` or
        ``replay`` (sequence number not greater than the last accepted one), or a decoding
        reason.
        """
        binding, body, sig = decode_update(raw)
        key = self._keys.get(binding.prefix)
        if key is None:
            raise BindingError("unknown_prefix", binding.prefix)
        try:
            key.verify(sig, _CONTEXT + body)
        except InvalidSignature as exc:
            raise BindingError("bad_signature") from exc
        last = self._seq.get(binding.prefix)
        if last is not None and binding.seq <= last:
            raise BindingError("replay", f"seq {binding.seq} <= {last}")
        self._seq[binding.prefix] = binding.seq
        return binding
