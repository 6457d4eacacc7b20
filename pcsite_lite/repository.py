"""Service repository: signed, content-addressed, versioned service code (paper §2.3).

PSPs upload named, versioned service code; compute nodes load it on first use and keep the
recently used services cached. Three pieces:

* :class:`Repository` — the store, a directory any number of processes on the machine read
  (writes are atomic renames, so a reader never sees half a file)::

      keys/<psp>.pub                        PSP's Ed25519 public key (32 raw bytes, hex)
      blobs/<d0d1>/<sha256 hex>             code, named by its SHA-256 (content-addressed)
      services/<psp>/<service>/<version>.json   {"digest", "signature", "size", "uploaded_at"}
      services/<psp>/<service>/ACTIVE       the active version's name
      GENERATION                            bumped by every activation (nodes poll it)

  A version is immutable once uploaded. Its signature is the PSP's Ed25519 signature over
  :func:`signed_message` — a domain tag, the PSP, service and version names and the code's
  SHA-256 — so a blob cannot be replayed under another name or version. :meth:`Repository.get`
  re-checks both the digest and the signature on *every* load: a tampered blob or record, or a
  signature by any key other than the PSP's registered one, raises :class:`RepositoryError`.
* :class:`ServiceCache` — the node side: ``get(psp, service)`` returns the loaded active
  version. Loaded services are keyed by (PSP, service, digest) in an LRU of ``capacity``
  entries; the loader (compiling code into a module, or starting its confined process) is a
  callable the service runtime supplies. The
  active pointers are re-read when ``GENERATION`` changed, checked at most once per
  ``staleness`` seconds of the injected clock, so activating a version reaches every node within
  that bound without restarting anything.
* PSP helpers: :func:`generate_key`, :func:`public_key_bytes`, :func:`sign_service`,
  :func:`sign_file`, :func:`load_private_key`.

>>> import tempfile
>>> repo = Repository(tempfile.mkdtemp())
>>> key = generate_key()
>>> repo.register_psp("acme", public_key_bytes(key))
>>> code = b"def process(pkt, api):\\n    api.forward_to(api.fetch('next'))\\n"
>>> sig = sign_service(key, "acme", "srouting", "1", code)
>>> sv = repo.upload("acme", "srouting", "1", code, sig)
>>> repo.activate("acme", "srouting", "1")
>>> cache = ServiceCache(repo, loader=lambda sc: sc.code.decode(), capacity=8)
>>> cache.get("acme", "srouting").splitlines()[0]
'def process(pkt, api):'
>>> repo.upload("acme", "srouting", "2", code + b"#", sign_service(generate_key(), "acme",
...             "srouting", "2", code + b"#"))  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
pcsite_lite.repository.RepositoryError: bad_signature: ...
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "DEFAULT_STALENESS",
    "MAX_CODE_BYTES",
    "Repository",
    "RepositoryError",
    "ServiceCache",
    "ServiceCode",
    "ServiceVersion",
    "generate_key",
    "load_private_key",
    "public_key_bytes",
    "sign_file",
    "sign_service",
    "signed_message",
]

T = TypeVar("T")

MAX_CODE_BYTES: Final = 1 << 20  #: largest service upload accepted
DEFAULT_STALENESS: Final = 0.005  #: seconds a node may keep running a deactivated version
SIGNATURE_DOMAIN: Final = b"packetcloud-service-code-v1\0"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")

#: stable reason codes of :class:`RepositoryError`
REASONS: Final = frozenset(
    {
        "bad_name",
        "bad_key",
        "unknown_psp",
        "key_exists",
        "bad_signature",
        "digest_mismatch",
        "too_large",
        "version_exists",
        "not_found",
        "no_active_version",
        "corrupt_record",
        "load_failed",
    }
)


class RepositoryError(Exception):
    """A repository operation failed; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RepositoryError("bad_name", f"bad {what} name {name!r} (1..64 of [A-Za-z0-9_.-])")
    return name


# --- signing (PSP side) ---------------------------------------------------------------------
def signed_message(psp: str, service: str, version: str, digest: str) -> bytes:
    """The bytes a PSP signs for one version: domain tag, names, and the code's SHA-256."""
    return SIGNATURE_DOMAIN + "\0".join((psp, service, version, digest)).encode()


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key for a PSP (keep it; register :func:`public_key_bytes` of it)."""
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of the public key (what :meth:`Repository.register_psp` takes)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_pem(key: Ed25519PrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM of the key (encrypted when ``password`` is given), for saving to a file."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def load_private_key(pem: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PEM private key; :class:`RepositoryError` ``bad_key`` if it is not Ed25519."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise RepositoryError("bad_key", f"cannot read private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RepositoryError("bad_key", "private key is not Ed25519")
    return key


def sign_service(
    key: Ed25519PrivateKey, psp: str, service: str, version: str, code: bytes
) -> bytes:
    """The PSP's signature over one version of its service code (64 bytes)."""
    digest = hashlib.sha256(code).hexdigest()
    return key.sign(signed_message(psp, service, version, digest))


def sign_file(
    key_pem_path: str | os.PathLike[str],
    code_path: str | os.PathLike[str],
    psp: str,
    service: str,
    version: str,
    password: bytes | None = None,
) -> bytes:
    """Sign a service file with a PEM key file; returns the signature bytes.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); k = generate_key()
    >>> _ = Path(d, "psp.pem").write_bytes(private_key_pem(k))
    >>> _ = Path(d, "svc.py").write_bytes(b"def process(pkt, api): pass\\n")
    >>> len(sign_file(os.path.join(d, "psp.pem"), os.path.join(d, "svc.py"), "acme", "fw", "1"))
    64
    """
    key = load_private_key(Path(key_pem_path).read_bytes(), password)
    return sign_service(key, psp, service, version, Path(code_path).read_bytes())


# --- records --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServiceVersion:
    """Metadata of one uploaded version."""

    psp: str
    service: str
    version: str
    digest: str  #: SHA-256 of the code, hex
    signature: bytes
    size: int
    uploaded_at: float  #: unix seconds


@dataclass(frozen=True, slots=True)
class ServiceCode:
    """Verified code of one version, as handed to a :class:`ServiceCache` loader."""

    psp: str
    service: str
    version: str
    digest: str
    code: bytes


def _atomic_write(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically. With ``exclusive``, return False if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = ""
        return True
    finally:
        if tmp:
            os.unlink(tmp)


# --- the repository -------------------------------------------------------------------------
class Repository:
    """The site's service repository in directory ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, max_code_bytes: int = MAX_CODE_BYTES):
        self.root = Path(root)
        self.max_code_bytes = max_code_bytes
        for sub in ("keys", "blobs", "services"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # keys
    def _key_path(self, psp: str) -> Path:
        return self.root / "keys" / f"{_check_name('psp', psp)}.pub"

    def register_psp(self, psp: str, public_key: bytes, *, replace: bool = False) -> None:
        """Register the PSP's Ed25519 public key (32 raw bytes). Replacing a different key
        needs ``replace=True`` (versions signed with the old key then no longer load)."""
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise RepositoryError("bad_key", "an Ed25519 public key is 32 raw bytes")
        try:
            Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise RepositoryError("bad_key", str(exc)) from None
        path = self._key_path(psp)
        data = public_key.hex().encode() + b"\n"
        if replace:
            _atomic_write(path, data)
        elif not _atomic_write(path, data, exclusive=True) and path.read_bytes() != data:
            raise RepositoryError("key_exists", f"psp {psp!r} already has a different key")

    def public_key(self, psp: str) -> Ed25519PublicKey:
        """The registered key of ``psp``; ``unknown_psp`` if none."""
        try:
            raw = bytes.fromhex(self._key_path(psp).read_text().strip())
            return Ed25519PublicKey.from_public_bytes(raw)
        except FileNotFoundError:
            raise RepositoryError("unknown_psp", f"no key registered for psp {psp!r}") from None
        except ValueError as exc:
            raise RepositoryError("corrupt_record", f"key file of {psp!r}: {exc}") from None

    def psps(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "keys").glob("*.pub"))

    # code
    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def _service_dir(self, psp: str, service: str) -> Path:
        return self.root / "services" / _check_name("psp", psp) / _check_name("service", service)

    def _verify(self, psp: str, service: str, version: str, digest: str, sig: bytes) -> None:
        try:
            self.public_key(psp).verify(sig, signed_message(psp, service, version, digest))
        except InvalidSignature:
            raise RepositoryError(
                "bad_signature",
                f"signature of {psp}/{service} version {version} does not verify "
                f"with the key registered for psp {psp!r}",
            ) from None

    def upload(
        self, psp: str, service: str, version: str, code: bytes, signature: bytes
    ) -> ServiceVersion:
        """Store a signed version (verified now and on every load). Versions are immutable:
        re-uploading the same code is a no-op, different code under a used name is refused."""
        digest = self.verify(psp, service, version, code, signature)
        sdir = self._service_dir(psp, service)
        blob = self._blob_path(digest)
        if not blob.exists():
            _atomic_write(blob, code)
        sv = ServiceVersion(psp, service, version, digest, signature, len(code), time.time())
        record = {
            "digest": digest,
            "signature": signature.hex(),
            "size": len(code),
            "uploaded_at": sv.uploaded_at,
        }
        path = sdir / f"{version}.json"
        if not _atomic_write(path, json.dumps(record).encode(), exclusive=True):
            existing = self.version(psp, service, version)
            if existing.digest != digest:
                raise RepositoryError(
                    "version_exists", f"{psp}/{service} version {version} exists with other code"
                )
            return existing
        return sv

    def verify(self, psp: str, service: str, version: str, code: bytes, signature: bytes) -> str:
        """Check names, size and the PSP's signature of an upload without storing it (a site
        does this before anything else looks at the code); returns the code's digest."""
        _check_name("version", version)
        self._service_dir(psp, service)  # checks the names
        if not isinstance(code, bytes) or not isinstance(signature, bytes):
            raise RepositoryError("bad_name", "code and signature must be bytes")
        if len(code) > self.max_code_bytes:
            raise RepositoryError("too_large", f"{len(code)} bytes > {self.max_code_bytes}")
        digest = hashlib.sha256(code).hexdigest()
        self._verify(psp, service, version, digest, signature)
        return digest

    def version(self, psp: str, service: str, version: str) -> ServiceVersion:
        """Metadata of one version; ``not_found`` if absent."""
        path = self._service_dir(psp, service) / f"{_check_name('version', version)}.json"
        try:
            rec = json.loads(path.read_bytes())
            if not _DIGEST.match(str(rec["digest"])):
                raise ValueError(f"digest is not 64 hex digits: {str(rec['digest'])[:80]!r}")
            return ServiceVersion(
                psp,
                service,
                version,
                str(rec["digest"]),
                bytes.fromhex(rec["signature"]),
                int(rec["size"]),
                float(rec["uploaded_at"]),
            )
        except FileNotFoundError:
            raise RepositoryError("not_found", f"{psp}/{service} version {version}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError("corrupt_record", f"{path}: {exc!r}") from None

    def versions(self, psp: str, service: str) -> list[ServiceVersion]:
        """All versions of a service, oldest upload first."""
        sdir = self._service_dir(psp, service)
        found = [self.version(psp, service, p.stem) for p in sdir.glob("*.json")]
        return sorted(found, key=lambda v: (v.uploaded_at, v.version))

    def services(self, psp: str) -> list[str]:
        base = self.root / "services" / _check_name("psp", psp)
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.exists() else []

    def activate(self, psp: str, service: str, version: str) -> None:
        """Make ``version`` the one nodes run (it must exist and verify)."""
        self.get(psp, service, version)  # refuses missing, tampered or badly signed code
        _atomic_write(self._service_dir(psp, service) / "ACTIVE", version.encode())
        self._bump_generation()

    def deactivate(self, psp: str, service: str) -> None:
        """Stop running the service (no active version; its versions stay)."""
        try:
            (self._service_dir(psp, service) / "ACTIVE").unlink()
        except FileNotFoundError:
            return
        self._bump_generation()

    def active(self, psp: str, service: str) -> str | None:
        """Name of the active version, or ``None``."""
        try:
            return (self._service_dir(psp, service) / "ACTIVE").read_text().strip() or None
        except FileNotFoundError:
            return None

    def generation(self) -> int:
        """A number that changes whenever any active pointer changes (cheap to poll)."""
        try:
            return int((self.root / "GENERATION").read_bytes() or b"0")
        except (FileNotFoundError, ValueError):
            return 0

    def _bump_generation(self) -> None:
        # a unique increasing value; no lock needed: equality is all nodes compare
        _atomic_write(self.root / "GENERATION", str(time.time_ns()).encode())

    def get(self, psp: str, service: str, version: str | None = None) -> ServiceCode:
        """Verified code of ``version`` (default: the active one).

        Raises ``no_active_version``, ``not_found``, ``digest_mismatch`` (blob altered) or
        ``bad_signature`` (record altered, or signed by a key that is not the PSP's).
        """
        if version is None:
            version = self.active(psp, service)
            if version is None:
                raise RepositoryError("no_active_version", f"{psp}/{service} has none")
        sv = self.version(psp, service, version)
        try:
            code = self._blob_path(sv.digest).read_bytes()
        except (FileNotFoundError, ValueError):
            raise RepositoryError("not_found", f"code {sv.digest} of {psp}/{service}") from None
        if hashlib.sha256(code).hexdigest() != sv.digest:
            raise RepositoryError(
                "digest_mismatch",
                f"code of {psp}/{service} version {version} does not match its SHA-256 "
                f"{sv.digest} (tampered or corrupt)",
            )
        self._verify(psp, service, version, sv.digest, sv.signature)
        return ServiceCode(psp, service, version, sv.digest, code)


# --- node-side cache ------------------------------------------------------------------------
class ServiceCache(Generic[T]):
    """Per-node LRU of loaded services, following the repository's active pointers.

    ``loader(code) -> T`` turns verified :class:`ServiceCode` into whatever the runtime runs
    (a compiled module); it is called once per (PSP, service, digest) while that stays cached
    (the same code of two services is loaded twice: they share no module state). A loader
    exception is raised as :class:`RepositoryError` ``load_failed`` (nothing is cached).
    """

    def __init__(
        self,
        repo: Repository,
        loader: Callable[[ServiceCode], T],
        *,
        capacity: int = 64,
        staleness: float = DEFAULT_STALENESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.repo = repo
        self.loader = loader
        self.capacity = capacity
        self.staleness = staleness
        self._clock = clock
        # (psp, service, digest) -> loaded service: two services with the same code never
        # share a loaded module (its globals) or a confined process
        self._lru: OrderedDict[tuple[str, str, str], T] = OrderedDict()
        self._active: dict[tuple[str, str], tuple[str, str]] = {}  # -> (version, digest)
        self._generation = repo.generation()
        self._deadline = clock() + staleness
        self.loads = 0
        self.evictions = 0

    def get(self, psp: str, service: str) -> T:
        """The loaded active version of ``psp``/``service`` (loading it on first use)."""
        if self._clock() >= self._deadline:
            self.refresh()
        active = self._active.get((psp, service))
        if active is None:
            active = self._resolve(psp, service)
        digest = active[1]
        key = (psp, service, digest)
        loaded = self._lru.get(key)
        if loaded is None:
            return self._load(psp, service, active[0])
        self._lru.move_to_end(key)
        return loaded

    def active_version(self, psp: str, service: str) -> str:
        """The version :meth:`get` runs for this service now."""
        if self._clock() >= self._deadline:
            self.refresh()
        active = self._active.get((psp, service)) or self._resolve(psp, service)
        return active[0]

    def _resolve(self, psp: str, service: str) -> tuple[str, str]:
        version = self.repo.active(psp, service)
        if version is None:
            raise RepositoryError("no_active_version", f"{psp}/{service} has none")
        active = (version, self.repo.version(psp, service, version).digest)
        self._active[(psp, service)] = active
        return active

    def _load(self, psp: str, service: str, version: str) -> T:
        code = self.repo.get(psp, service, version)  # verifies digest and signature
        try:
            loaded = self.loader(code)
        except Exception as exc:
            raise RepositoryError(
                "load_failed", f"{psp}/{service} version {version}: {exc!r}"
            ) from exc
        self.loads += 1
        self._lru[(psp, service, code.digest)] = loaded
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
            self.evictions += 1
        return loaded

    def refresh(self) -> None:
        """Re-read the active pointers now if any changed (normally automatic)."""
        self._deadline = self._clock() + self.staleness
        generation = self.repo.generation()
        if generation != self._generation:
            self._generation = generation
            self._active.clear()

    def __len__(self) -> int:
        return len(self._lru)
