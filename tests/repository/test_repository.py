"""Service repository: signatures, content addressing, tamper and wrong-key rejection,
immutable versions, the node-side LRU and live rollout (also across processes)."""

from __future__ import annotations

import doctest
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pcsite_lite import repository
from pcsite_lite.repository import (
    Repository,
    RepositoryError,
    ServiceCache,
    ServiceCode,
    generate_key,
    load_private_key,
    private_key_pem,
    public_key_bytes,
    sign_file,
    sign_service,
)
from tests.support import FakeClock

V1 = b"def process(pkt, api):\n    api.forward_to('198.18.1.1')\n"
V2 = b"def process(pkt, api):\n    api.forward_to('198.18.2.1')\n"


@pytest.fixture
def acme_key() -> Ed25519PrivateKey:
    return generate_key()


@pytest.fixture
def repo(tmp_path: Path, acme_key: Ed25519PrivateKey) -> Repository:
    r = Repository(tmp_path / "repo")
    r.register_psp("acme", public_key_bytes(acme_key))
    return r


@pytest.fixture
def two_versions(repo: Repository, acme_key: Ed25519PrivateKey) -> Repository:
    """``repo`` with acme's srouting uploaded as version 1 (:data:`V1`, active) and 2 (``V2``)."""
    upload(repo, acme_key, "1", V1)
    upload(repo, acme_key, "2", V2)
    repo.activate("acme", "srouting", "1")
    return repo


def upload(repo: Repository, key: Ed25519PrivateKey, version: str, code: bytes,
           psp: str = "acme", service: str = "srouting") -> None:  # fmt: skip
    repo.upload(psp, service, version, code, sign_service(key, psp, service, version, code))


def reason(exc: pytest.ExceptionInfo[RepositoryError]) -> str:
    return exc.value.reason


def test_docstring_examples_run() -> None:
    result = doctest.testmod(repository, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_upload_activate_get_round_trip(repo: Repository, acme_key: Ed25519PrivateKey) -> None:
    upload(repo, acme_key, "1", V1)
    assert repo.active("acme", "srouting") is None
    with pytest.raises(RepositoryError) as exc:
        repo.get("acme", "srouting")
    assert reason(exc) == "no_active_version"
    repo.activate("acme", "srouting", "1")
    code = repo.get("acme", "srouting")
    assert (code.version, code.code, code.digest) == ("1", V1, hashlib.sha256(V1).hexdigest())
    assert [v.version for v in repo.versions("acme", "srouting")] == ["1"]
    assert repo.services("acme") == ["srouting"] and repo.psps() == ["acme"]


def test_code_is_stored_once_under_its_sha256(
    repo: Repository, acme_key: Ed25519PrivateKey
) -> None:
    upload(repo, acme_key, "1", V1)
    upload(repo, acme_key, "1", V1, service="other")
    blobs = [p for p in (repo.root / "blobs").rglob("*") if p.is_file()]
    assert [b.name for b in blobs] == [hashlib.sha256(V1).hexdigest()]
    assert blobs[0].read_bytes() == V1


def test_signature_by_another_psps_key_is_rejected(
    repo: Repository, acme_key: Ed25519PrivateKey
) -> None:
    mallory = generate_key()
    repo.register_psp("mallory", public_key_bytes(mallory))
    with pytest.raises(RepositoryError, match="key registered for psp 'acme'") as exc:
        upload(repo, mallory, "1", V1)  # mallory signs, claims to be acme
    assert reason(exc) == "bad_signature"
    assert repo.versions("acme", "srouting") == []


def test_signature_cannot_be_replayed_under_another_name_or_version(
    repo: Repository, acme_key: Ed25519PrivateKey
) -> None:
    sig = sign_service(acme_key, "acme", "srouting", "1", V1)
    for service, version in (("srouting", "2"), ("firewall", "1")):
        with pytest.raises(RepositoryError) as exc:
            repo.upload("acme", service, version, V1, sig)
        assert reason(exc) == "bad_signature"
    with pytest.raises(RepositoryError) as exc:
        repo.upload("acme", "srouting", "1", V2, sig)  # other code, same signature
    assert reason(exc) == "bad_signature"


def test_unregistered_psp_cannot_upload(repo: Repository) -> None:
    key = generate_key()
    with pytest.raises(RepositoryError) as exc:
        upload(repo, key, "1", V1, psp="nobody")
    assert reason(exc) == "unknown_psp"


def test_tampered_blob_is_rejected_on_load(repo: Repository, acme_key: Ed25519PrivateKey) -> None:
    upload(repo, acme_key, "1", V1)
    repo.activate("acme", "srouting", "1")
    blob = repo.root / "blobs" / hashlib.sha256(V1).hexdigest()[:2] / hashlib.sha256(V1).hexdigest()
    blob.write_bytes(V1.replace(b"198.18.1.1", b"203.0.113.66"))
    with pytest.raises(RepositoryError, match="tampered") as exc:
        repo.get("acme", "srouting")
    assert reason(exc) == "digest_mismatch"
    cache: ServiceCache[bytes] = ServiceCache(repo, lambda c: c.code)
    with pytest.raises(RepositoryError) as exc:
        cache.get("acme", "srouting")
    assert reason(exc) == "digest_mismatch" and len(cache) == 0


def test_tampered_record_is_rejected_on_load(two_versions: Repository) -> None:
    repo = two_versions
    # point version 1's record at version 2's (genuine, stored) code
    rec_path = repo.root / "services" / "acme" / "srouting" / "1.json"
    rec = json.loads(rec_path.read_text())
    rec["digest"] = hashlib.sha256(V2).hexdigest()
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(RepositoryError) as exc:
        repo.get("acme", "srouting")
    assert reason(exc) == "bad_signature"
    rec["digest"] = "../../../keys/acme.pub"  # must not be followed outside the blob store
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(RepositoryError) as exc:
        repo.get("acme", "srouting")
    assert reason(exc) == "corrupt_record"
    rec_path.write_text("{not json")
    with pytest.raises(RepositoryError) as exc:
        repo.get("acme", "srouting")
    assert reason(exc) == "corrupt_record"


def test_cannot_activate_a_missing_or_bad_version(
    repo: Repository, acme_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(RepositoryError) as exc:
        repo.activate("acme", "srouting", "9")
    assert reason(exc) == "not_found"
    assert repo.active("acme", "srouting") is None


def test_versions_are_immutable(repo: Repository, acme_key: Ed25519PrivateKey) -> None:
    upload(repo, acme_key, "1", V1)
    upload(repo, acme_key, "1", V1)  # same code again: accepted, nothing changes
    with pytest.raises(RepositoryError) as exc:
        upload(repo, acme_key, "1", V2)
    assert reason(exc) == "version_exists"
    assert repo.get("acme", "srouting", "1").code == V1


def test_key_registration_rules(repo: Repository, acme_key: Ed25519PrivateKey) -> None:
    repo.register_psp("acme", public_key_bytes(acme_key))  # same key: fine
    new = generate_key()
    with pytest.raises(RepositoryError) as exc:
        repo.register_psp("acme", public_key_bytes(new))
    assert reason(exc) == "key_exists"
    upload(repo, acme_key, "1", V1)
    repo.register_psp("acme", public_key_bytes(new), replace=True)
    with pytest.raises(RepositoryError) as exc:
        repo.get("acme", "srouting", "1")  # signed with the old key
    assert reason(exc) == "bad_signature"
    for bad in (b"short", b"\0" * 33, "not bytes"):
        with pytest.raises(RepositoryError) as exc:
            repo.register_psp("x", bad)  # type: ignore[arg-type]
        assert reason(exc) == "bad_key"


@pytest.mark.parametrize(
    ("psp", "service", "version"),
    [("ac me", "s", "1"), ("acme", "../etc", "1"), ("acme", "s", "1/2"), ("acme", "s", "")],
)
def test_bad_names_are_rejected(
    repo: Repository, acme_key: Ed25519PrivateKey, psp: str, service: str, version: str
) -> None:
    with pytest.raises(RepositoryError) as exc:
        repo.upload(psp, service, version, V1, b"\0" * 64)
    assert reason(exc) == "bad_name"


def test_oversized_code_is_refused(tmp_path: Path, acme_key: Ed25519PrivateKey) -> None:
    repo = Repository(tmp_path, max_code_bytes=100)
    repo.register_psp("acme", public_key_bytes(acme_key))
    with pytest.raises(RepositoryError) as exc:
        upload(repo, acme_key, "1", b"#" * 101)
    assert reason(exc) == "too_large"


def test_psp_helpers_sign_a_file_with_a_pem_key(tmp_path: Path, repo: Repository) -> None:
    key = generate_key()
    repo.register_psp("globex", public_key_bytes(key))
    (tmp_path / "k.pem").write_bytes(private_key_pem(key, password=b"pw"))
    (tmp_path / "svc.py").write_bytes(V1)
    sig = sign_file(tmp_path / "k.pem", tmp_path / "svc.py", "globex", "fw", "1", password=b"pw")
    repo.upload("globex", "fw", "1", V1, sig)
    assert load_private_key(private_key_pem(key)).public_key() == key.public_key()
    with pytest.raises(RepositoryError) as exc:
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert reason(exc) == "bad_key"


# --- node-side cache --------------------------------------------------------------------------
def test_cache_loads_on_first_use_and_evicts_least_recently_used(
    repo: Repository, acme_key: Ed25519PrivateKey
) -> None:
    loaded: list[str] = []

    def loader(code: ServiceCode) -> str:
        loaded.append(code.service)
        return code.service

    for name in ("a", "b", "c"):
        upload(repo, acme_key, "1", V1 + name.encode(), service=name)
        repo.activate("acme", name, "1")
    cache: ServiceCache[str] = ServiceCache(repo, loader, capacity=2, clock=FakeClock(50.0))
    assert cache.get("acme", "a") == "a" and cache.get("acme", "b") == "b"
    assert cache.get("acme", "a") == "a"  # hit: a becomes most recent
    assert loaded == ["a", "b"]
    assert cache.get("acme", "c") == "c"  # evicts b, the least recently used
    assert len(cache) == 2 and cache.evictions == 1
    assert cache.get("acme", "a") == "a" and loaded == ["a", "b", "c"]
    assert cache.get("acme", "b") == "b" and loaded == ["a", "b", "c", "b"]


def test_failing_loader_is_reported_and_nothing_is_cached(
    repo: Repository, acme_key: Ed25519PrivateKey
) -> None:
    upload(repo, acme_key, "1", b"def process(:\n")
    repo.activate("acme", "srouting", "1")

    def compile_it(code: ServiceCode) -> object:
        return compile(code.code, code.service, "exec")

    cache: ServiceCache[object] = ServiceCache(repo, compile_it)
    for _ in range(2):
        with pytest.raises(RepositoryError) as exc:
            cache.get("acme", "srouting")
        assert reason(exc) == "load_failed" and isinstance(exc.value.__cause__, SyntaxError)
    assert len(cache) == 0


def test_live_rollout_reaches_the_node_within_the_staleness_bound(two_versions: Repository) -> None:
    repo = two_versions
    clock = FakeClock(50.0)
    loads: list[str] = []
    cache: ServiceCache[bytes] = ServiceCache(
        repo, lambda c: loads.append(c.version) or c.code, staleness=0.005, clock=clock
    )
    assert cache.get("acme", "srouting") == V1
    repo.activate("acme", "srouting", "2")
    assert cache.get("acme", "srouting") == V1  # clock has not moved: may lag
    clock.now += 0.005
    assert cache.get("acme", "srouting") == V2
    assert cache.active_version("acme", "srouting") == "2"
    repo.activate("acme", "srouting", "1")  # roll back: still cached by digest, no reload
    clock.now += 0.005
    assert cache.get("acme", "srouting") == V1
    assert loads == ["1", "2"]


_ACTIVATE = """
import sys
from pcsite_lite.repository import Repository
Repository(sys.argv[1]).activate("acme", "srouting", sys.argv[2])
"""

_NODE = """
import sys, time
from pcsite_lite.repository import ServiceCache, Repository
cache = ServiceCache(Repository(sys.argv[1]), lambda c: c.version)
print(cache.get("acme", "srouting"), flush=True)
deadline = time.monotonic() + 10
while cache.get("acme", "srouting") != "2":
    if time.monotonic() > deadline:
        sys.exit("rollout never seen")
print("2", flush=True)
"""


def test_rollout_by_another_process_reaches_running_nodes(two_versions: Repository) -> None:
    repo = two_versions
    node = subprocess.Popen(
        [sys.executable, "-c", _NODE, str(repo.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert node.stdout is not None
        assert node.stdout.readline().strip() == "1"  # the node runs version 1
        subprocess.run([sys.executable, "-c", _ACTIVATE, str(repo.root), "2"], check=True)
        done = time.monotonic()
        assert node.stdout.readline().strip() == "2"
        assert time.monotonic() - done < 2.0
        assert node.wait(10) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
