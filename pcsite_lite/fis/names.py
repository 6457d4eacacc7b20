"""FIS naming and values: namespaces, keys, who may write what, JSON values, frozen copies."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, TypeAlias

from pcsite_lite.fis.errors import FISValueError
from pcsite_lite.lpm import PrefixError, format_prefix, parse_prefix

__all__ = [
    "CONGESTION",
    "ISP",
    "MAX_KEY_LEN",
    "FrozenDict",
    "FrozenList",
    "JSONValue",
    "can_read",
    "can_write",
    "check_namespace",
    "freeze",
    "label_key",
    "namespace",
]

JSONValue: TypeAlias = Any  #: a JSON-compatible value (see the module docstring)

ISP: Final = "isp"  #: the ISP's namespace and the ISP's writer identity
CONGESTION: Final = "congestion"  #: ISP LPM table: prefix -> {"level": 0.0..1.0}
MAX_KEY_LEN: Final = 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


def namespace(psp: str, service: str) -> str:
    """The FIS namespace of one PSP's service: ``"psp/service"``.

    Names are 1..64 of ``[A-Za-z0-9_.-]`` (starting alphanumeric); ``psp`` may not be ``"isp"``.

    >>> namespace("acme", "srouting")
    'acme/srouting'
    """
    for what, name in (("psp", psp), ("service", service)):
        if not isinstance(name, str) or not _NAME.match(name):
            raise FISValueError(f"bad {what} name {name!r} (1..64 of [A-Za-z0-9_.-])")
    if psp == ISP:
        raise FISValueError(f"psp name {ISP!r} is reserved for the ISP")
    return f"{psp}/{service}"


def check_namespace(ns: str) -> str:
    """Return ``ns`` if it is :data:`ISP` or ``"psp/service"``; raise :class:`FISValueError`."""
    if ns == ISP:
        return ns
    if isinstance(ns, str):
        psp, sep, service = ns.partition("/")
        if sep and _NAME.match(psp) and _NAME.match(service) and psp != ISP:
            return ns
    raise FISValueError(f"bad namespace {ns!r} (expected 'isp' or 'psp/service')")


def label_key(label: int) -> str:
    """FIS key of an integer label (circuit label, service ID): its decimal text.

    >>> label_key(0x00ABCDEF)
    '11259375'
    """
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise FISValueError(f"label must be a non-negative int: {label!r}")
    return str(label)


def can_write(writer: str, ns: str) -> bool:
    """Whether ``writer`` (:data:`ISP` or a PSP name) may write namespace ``ns``."""
    if writer == ISP:
        return True
    return ns != ISP and ns.partition("/")[0] == writer


def can_read(service_ns: str, ns: str) -> bool:
    """Whether the service owning ``service_ns`` may read ``ns``: its own and :data:`ISP`."""
    return ns == service_ns or ns == ISP


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _NAME.match(table):
        raise FISValueError(f"bad table name {table!r} (1..64 of [A-Za-z0-9_.-])")
    return table


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
        raise FISValueError(
            f"FIS keys are str of 1..{MAX_KEY_LEN} characters "
            f"(int labels: use label_key()): {key!r}"[:200]
        )
    return key


def _canon_prefix(prefix: str | tuple[int, int]) -> tuple[int, int, str]:
    try:
        net, plen = parse_prefix(prefix)
    except PrefixError as exc:
        raise FISValueError(str(exc)) from None
    return net, plen, format_prefix(net, plen, check=False)


def _check_json(value: object, depth: int = 0) -> None:
    if depth > 32:
        raise FISValueError("value nested too deeply (max 32)")
    if value is None:
        if depth == 0:
            raise FISValueError("value None is not storable (None means absent); delete instead")
        return
    t = type(value)
    if t is str or t is bool or t is int:
        return
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise FISValueError(f"non-finite float {value!r} is not JSON")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise FISValueError(f"JSON object keys must be str, got {k!r}")
            _check_json(item, depth + 1)
        return
    raise FISValueError(f"value of type {t.__name__} is not JSON-compatible")


def _encode(value: JSONValue) -> str:
    _check_json(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _read_only(*_a: object, **_k: object) -> Any:
    raise TypeError("FIS values from the cache are read-only (copy them to modify)")


class FrozenDict(dict):
    """A read-only ``dict`` (what :class:`CachedFIS` returns for JSON objects).

    Compares equal to plain dicts and serialises with ``json.dumps``; ``dict(v)`` copies it.
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


class FrozenList(list):
    """A read-only ``list`` (what :class:`CachedFIS` returns for JSON arrays)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only


def freeze(value: JSONValue) -> JSONValue:
    """Deep read-only copy: dicts become :class:`FrozenDict`, lists :class:`FrozenList`."""
    if isinstance(value, dict):
        return FrozenDict((k, freeze(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return FrozenList(freeze(v) for v in value)
    return value
