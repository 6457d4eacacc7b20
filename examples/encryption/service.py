"""Encryption offload (paper §2.6.1): encrypt at the ingress site, decrypt at the egress site.

A mobile sender hands its plaintext to the first site of a circuit instead of spending its own
CPU (and battery) on cryptography. The same service runs at both presences; the FIS of each
site says which role the circuit's incoming label plays there, and holds the keys -- the sender
never sees them:

* ``"hop:<label>"`` -> ``{"role": "encrypt"}`` or ``{"role": "decrypt"}``
* ``"epoch"`` -> the current key epoch (0..127), read by the encrypting presence
* ``"key:<epoch>"`` -> the AES-256-GCM key of that epoch, 64 hex digits (both presences;
  the PSP keeps the previous epoch at the egress while packets sealed under it are in flight)

The shim's metadata byte carries the state between the two presences: bit 7 = sealed,
bits 0-6 = the key epoch. The payload between them is the Packet API's ``aes`` form
``nonce(12) || ciphertext || tag(16)`` (AES-GCM from ``cryptography``), with the metadata byte
as associated data: the tag binds the epoch the packet claims. A payload that does not
authenticate at the egress (tampered on the way, wrong epoch) is dropped with the reason
``crypt_auth_failed``; an unknown epoch with ``crypt_no_key``; plaintext arriving where
ciphertext is expected with ``crypt_not_sealed``.
"""

import binascii

SEALED = 0x80
EPOCH_MASK = 0x7F


def seal_metadata(epoch):
    """The metadata byte that says: sealed under ``epoch``."""
    return SEALED | (epoch & EPOCH_MASK)


def open_metadata(metadata):
    """(sealed?, epoch) from a metadata byte."""
    return bool(metadata & SEALED), metadata & EPOCH_MASK


def epoch_key(pkt, epoch):
    text = pkt.fetch("key:" + str(epoch))
    if text is None:
        return None
    return binascii.unhexlify(text)


def process(pkt):
    """Packet API entry point (``pcsite_lite/api.py``)."""
    hop = pkt.fetch("hop:" + str(pkt.shim.label))
    if hop is None:
        return pkt.drop("crypt_no_role")
    sealed, epoch = open_metadata(pkt.shim.metadata)
    if hop["role"] == "encrypt":
        if sealed:
            return pkt.drop("crypt_already_sealed")
        epoch = pkt.fetch("epoch")
        if epoch is None:
            return pkt.drop("crypt_no_key")
        key = epoch_key(pkt, epoch)
        if key is None:
            return pkt.drop("crypt_no_key")
        sealed = seal_metadata(epoch)
        pkt.set_payload(pkt.aes(pkt.read(), key, aad=bytes([sealed])))
        pkt.shim.update(metadata=sealed)
        return None
    if not sealed:
        return pkt.drop("crypt_not_sealed")
    key = epoch_key(pkt, epoch)
    if key is None:
        return pkt.drop("crypt_no_key")
    try:
        plain = pkt.aes(pkt.read(), key, decrypt=True, aad=bytes([pkt.shim.metadata]))
    except Exception:
        return pkt.drop("crypt_auth_failed")
    pkt.set_payload(plain)
    pkt.shim.update(metadata=0)
    return None
