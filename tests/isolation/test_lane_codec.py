"""The confined lane's framing in C (``pcsite_lite._fastio``: a form-1 packet's record, a
batch answer's records, the channel's busy-poll) against its pure-Python reference in
:mod:`pcsite_lite.confine` / :mod:`pcsite_lite.fastio`: same results, same refusals."""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

import pytest

from pcsite_lite import confine, fastio
from pcsock.wire import HopKey, build_circuit_packet

try:
    from pcsite_lite import _fastio  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - no compiler: the reference runs alone
    _fastio = None

needs_c = pytest.mark.skipif(_fastio is None, reason="the C helper is not built")


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except ValueError:
        return ("refused", None)


@needs_c
def test_form1_record_in_c_is_the_reference_record() -> None:
    rnd = random.Random(16)
    for i in range(300):
        data = bytes(
            build_circuit_packet(
                src=f"198.18.{rnd.randrange(256)}.{rnd.randrange(256)}",
                dst="198.18.9.1",
                label=rnd.randrange(1 << 32),
                key=HopKey(bytes(16)),
                payload=rnd.randbytes(rnd.randrange(0, 300)),
                metadata=rnd.randrange(256),
                hop_limit=rnd.randrange(256),
                ttl=rnd.randrange(1, 256),
                tos=rnd.randrange(256),
                orig_src=rnd.randrange(1 << 32),
            )
        )
        now = rnd.random() * 2e9
        c, py = _fastio.form1_meta(data, 20, now), confine._py_form1_meta(data, 20, now)
        assert c == py, i
        meta = confine._META.unpack(c)
        assert meta[13] == len(data) - 36 and meta[12] == now
    for bad in (b"", b"x" * 19, b"x" * 35):
        assert _outcome(_fastio.form1_meta, bad, 20, 0.0) == ("refused", None)
        assert _outcome(confine._py_form1_meta, bad, 20, 0.0) == ("refused", None)


def _answer(records: list[tuple[int, int, int, int]], extra: bytes, tails: bytes,
            count: int | None = None) -> bytes:  # fmt: skip
    n = len(records) if count is None else count
    body = b"".join(struct.pack("!BBII", *r) for r in records)
    return b"R" + struct.pack("!III", n, len(extra), 7) + body + extra + tails


@needs_c
def test_answer_records_in_c_are_the_reference_records() -> None:
    rnd = random.Random(61)
    zero = confine._ZERO
    for i in range(2000):
        n = rnd.randrange(0, 6)
        recs, tails = [], b""
        for _ in range(n):
            ln = rnd.choice((0, 0, rnd.randrange(0, 40)))
            recs.append((rnd.choice((0, 0, 1, 2, 3, 9)), rnd.choice((0, 0, 1, 2)),
                         rnd.choice((0, 0, 5)), ln))  # fmt: skip
            tails += rnd.randbytes(ln)
        extra = rnd.choice((b"", b"[1]", b'[["a","b"]]'))
        msg = _answer(recs, extra, tails, count=rnd.choice((n, n, n + 1)))
        if rnd.random() < 0.2:  # cut or lengthen it
            msg = msg[: rnd.randrange(len(msg) + 1)] if rnd.random() < 0.5 else msg + b"x"
        c = _outcome(_fastio.answer_records, msg, n, zero)
        py = _outcome(confine._py_answer_records, msg, n, zero)
        assert c == py, (i, msg)
        if c[0] == "ok":  # the all-zero record is the shared one, in both
            assert [r is zero for r in c[1][0]] == [r is zero for r in py[1][0]]


def test_a_result_that_only_read_is_the_shared_zero_and_actions_are_attached() -> None:
    msg = _answer([(0, 0, 0, 0), (1, 1, 3, 2), (2, 0, 0, 0)],
                  b'[[["log","hi"]],["error","boom"]]', b"ok")  # fmt: skip
    out = confine._decode_answer(msg, 3, False)
    assert out[0] is confine._ZERO
    assert out[1] == (1, 1, 3, [["log", "hi"]], b"ok")
    assert out[2] == (2, 0, 0, ["error", "boom"], b"")


def _impls() -> list[Any]:
    out = [pytest.param(fastio._py_recv_spin, id="python")]
    if _fastio is not None:
        out.append(pytest.param(_fastio.recv_spin, id="c"))
    return out


@pytest.mark.parametrize("recv_spin", _impls())
def test_recv_spin_polls_for_its_window_then_gives_up(recv_spin: Any) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        msg, spun, cpu = recv_spin(a.fileno(), 1000, 2_000_000)
        assert msg is None and spun >= 2_000_000 and 0 < cpu <= spun + 1_000_000
        b.send(b"batch")
        msg, spun, cpu = recv_spin(a.fileno(), 1000, 50_000_000)
        assert msg == b"batch" and spun < 50_000_000 and cpu >= 0
        b.close()
        assert recv_spin(a.fileno(), 1000, 1_000_000)[0] == b""  # the worker is gone
        with pytest.raises(ValueError):
            recv_spin(a.fileno(), 0, 1000)


def test_the_confined_sides_runner_answers_what_the_worker_decodes() -> None:
    """``confine._Runner`` (the process's batch loop, no I/O) on a frame built as the worker
    builds it: per packet the outcome the service produced, read back by the worker's own
    decoder (no action, a rewritten payload, actions, an exception, a misused call, an
    argument JSON cannot carry, the budget's timeout)."""
    from pcsite_lite.api import ServiceContext
    from pcsite_lite.sandbox import load_service

    src = (
        "def process(pkt):\n"
        "    p = pkt.read()\n"
        "    if p == b'noop':\n        return\n"
        "    if p == b'flip':\n        pkt.write(0, b'FL')\n        return\n"
        "    if p == b'acts':\n        pkt.log('hi')\n        pkt.forward_to('198.18.0.9')\n"
        "        return\n"
        "    if p == b'boom':\n        raise KeyError('k')\n"
        "    if p == b'misuse':\n        pkt.read(-1)\n"
        "    if p == b'nojson':\n        pkt.store('k', {1, 2})\n        return\n"
        "    if p == b'loop':\n        while True:\n            pass\n"
    )
    budget = confine._CpuBudget(max_ticks=10_000, max_ns=50_000_000)
    loaded = load_service(src, "a/b", budget=budget)
    pkt = confine._Local(lambda *a: None, {}, ServiceContext("", "", budget=budget))
    runner = confine._Runner(loaded.process, pkt, budget)
    payloads = [b"noop", b"flip", b"acts", b"boom", b"misuse", b"nojson", b"loop", b"noop"]
    metas = [
        confine._META.pack(1, 1, 7, 0, 0, 0, 0, 0xC6120001, 0xC6120002, 17, 0, 64, 1.5, len(p))
        for p in payloads
    ]
    frame = b"B" + confine._HEAD.pack(len(payloads)) + b"".join(metas) + b"".join(payloads)
    answer = runner.answer(frame, spun_ns=7_000)
    assert confine._RHEAD.unpack_from(answer, 1)[2] == 7  # the poll, in µs
    res = confine._decode_answer(answer, len(payloads), False)
    codes = [r[0] for r in res]
    assert codes == [confine._OK, confine._OK, confine._ACTS] + [confine._FAILED] * 4 + [
        confine._OK
    ]
    assert res[1][1] and res[1][4] == b"FLip"  # the rewritten payload comes back
    assert res[2][3] == [["log", "hi"], ["fwd", "198.18.0.9"]]
    assert res[3][3][0] == "error" and "KeyError" in res[3][3][1]
    assert res[4][3][0] == "api_misuse"
    assert res[5][3] == ["api_misuse", "action arguments must be JSON values"]
    assert res[6][3] == ["timeout", ""]
    assert not res[7][1] and res[7][4] == b""  # the next packet starts afresh
