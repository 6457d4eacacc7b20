"""The site daemon's configuration file (TOML) and its validation.

Every mistake is a :class:`ConfigError` naming the key (``site.workers``), its line in the file
and what is wrong. A file with several mistakes raises one :class:`ConfigError` listing them
all (``.errors``): every unknown section and key, every wrong type and out-of-range value, and
each other mistake that does not depend on an earlier one (the first such mistake in
``[site]``, ``[dataplane]`` or ``[control]`` ends the checks of those three; ``[limits]``,
``[metering]`` and ``[services]`` are still checked). ``pcsite check-config`` prints them.
See ``docs/daemon.md`` for the reference with an example.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from pcsite_lite.control.auth import MIN_TOKEN_LEN
from pcsite_lite.control.limits import LIMIT_RANGES, Limits

__all__ = [
    "ConfigError",
    "ControlConfig",
    "DataplaneConfig",
    "Limits",
    "MeteringConfig",
    "PspConfig",
    "SiteConfig",
    "TlsConfig",
    "load",
]

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MODES: Final = ("site", "bare")
#: "noop": a service without code at this site runs the shipped no-op (packets follow the
#: installed out hop); "drop": its packets are dropped as ``service_unavailable``.
UNDEPLOYED: Final = ("noop", "drop")


class ConfigError(Exception):
    """A configuration the daemon refuses to run with; ``key`` names the offending setting,
    ``line`` its line in the file (when known); ``errors`` every mistake found."""

    def __init__(self, key: str, message: str, line: int | None = None) -> None:
        self.key = key
        self.message = message
        self.line = line
        self.errors: list[ConfigError] = [self]
        where = f"line {line}: " if line else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")

    @classmethod
    def of(cls, errors: list[ConfigError], text: str = "") -> ConfigError:
        """One error listing ``errors`` (each given its line in ``text``), in line order."""
        located = [cls(e.key, e.message, e.line or _key_line(text, e.key)) for e in errors]
        located.sort(key=lambda e: (e.line is None, e.line or 0))
        head = located[0]
        exc = cls(head.key, head.message, head.line)
        if len(located) > 1:
            exc.args = ("; ".join(str(e) for e in located) + f" ({len(located)} errors)",)
        exc.errors = located
        return exc


def _key_line(text: str, key: str) -> int | None:
    """The line of dotted ``key`` (``site.workers``, ``control.psps.acme.token``) in TOML
    ``text``: the key under its table header, else the header, else None."""
    if not text or not key:
        return None
    parts = key.split(".")
    lines = text.splitlines()
    for cut in range(len(parts), 0, -1):  # the longest table header that exists
        header = re.compile(rf"^\s*\[\s*{re.escape('.'.join(parts[:cut]))}\s*\]\s*(#.*)?$")
        start = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
        if start is None:
            continue
        rest = parts[cut:]
        if not rest:
            return start + 1
        pat = re.compile(rf"^\s*{re.escape(rest[0])}\s*=")
        for i in range(start + 1, len(lines)):
            if lines[i].lstrip().startswith("["):
                break
            if pat.match(lines[i]):
                return i + 1
        return start + 1
    return None


#: While :func:`parse` runs: where mistakes that need not stop it are collected.
_found: contextvars.ContextVar[list[ConfigError] | None] = contextvars.ContextVar(
    "pcsite_config_errors", default=None
)


def _report(key: str, message: str) -> None:
    """Record a mistake and go on (inside :func:`parse`), else raise it."""
    found = _found.get()
    if found is None:
        raise ConfigError(key, message)
    found.append(ConfigError(key, message))


def _unknown(section: str, keys: Any, known: Any, message: str = "unknown key") -> None:
    for k in sorted(set(keys) - set(known)):
        _report(f"{section}.{k}", message)


@dataclass(frozen=True, slots=True)
class PspConfig:
    name: str
    token: str
    signing_key: bytes | None  #: raw Ed25519 public key (32 bytes) that signs its code


@dataclass(frozen=True, slots=True)
class ControlConfig:
    host: str
    port: int
    admin_token: str
    psps: tuple[PspConfig, ...]
    trust_anchor: str | None  #: DS/DNSKEY zone-file text
    max_body: int


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: the control API's certificate chain and key (PEM files, checked at load)."""

    cert: str
    key: str

    def server_context(self) -> Any:
        from pcsock.httpserver import tls_context

        return tls_context(self.cert, self.key)


@dataclass(frozen=True, slots=True)
class DataplaneConfig:
    tun_prefix: str
    mtu: int
    buckets: int
    table_base: int
    mark_base: int
    rule_pref: int
    nft_table: str
    restart_delay: float
    tx: str  #: "tun" (write back into the TUN device) or "raw" (IP_HDRINCL raw socket)
    #: vCPUs the workers are pinned to, worker ``i`` to ``cpus[i % len(cpus)]``; () = unpinned
    cpus: tuple[int, ...] = ()
    #: longest busy-poll window (µs) a worker spins on its empty TUN queue before blocking;
    #: adaptive (see docs/daemon.md), 0 = block at once
    busy_poll_us: int = 50
    #: packets a worker reads from its TUN device per batch
    batch: int = 256
    #: packets that may wait in a worker's TUN device (its txqueuelen; the kernel's is 500)
    queue_len: int = 1000
    #: switch packets of natively declared services in C (pcsite_lite.native); false: every
    #: packet through the Python pipeline
    native: bool = True

    def cpu_of(self, worker: int) -> int | None:
        """The vCPU worker ``worker`` is pinned to, or None."""
        return self.cpus[worker % len(self.cpus)] if self.cpus else None


@dataclass(frozen=True, slots=True)
class MeteringConfig:
    ledger: str  #: the daemon's own usage ledger (SQLite); default ``<state_dir>/usage.ledger``
    interval: float  #: seconds between appends of metered usage to it


@dataclass(frozen=True, slots=True)
class ServicesConfig:
    """``[services]``: where provider code runs (docs/security.md) and replicate caps."""

    isolation: str = "process"  #: "process" (confined, one per service) or "inprocess"
    trusted: tuple[str, ...] = ()  #: "psp/service" names the operator runs in the worker
    deadline_ms: float = 20.0  #: a confined call not answered by then: process killed
    per_packet_ms: float = 1.0  #: ... plus this per packet of the batch
    #: a service's budget per packet (wall clock from its start; the sandbox's ``Budget``)
    packet_budget_ms: float = 10.0
    memory_mb: int = 512  #: RLIMIT_AS and memory cgroup limit of a confined process
    cpu_percent: int = 100  #: CPU cgroup quota of a confined process (% of one CPU)
    replicate_per_packet: int = 16  #: most copies one packet may become
    replicate_per_second: int = 10_000  #: most copies per second per service and worker
    cpus: tuple[int, ...] = ()  #: vCPUs confined processes run on (empty: the worker's)
    #: longest a confined process busy-polls its channel after an answer (µs; only when it
    #: runs on other vCPUs than the worker; 0: never). The site pays for it (docs/billing.md)
    spin_us: int = 200

    def policy(self) -> Any:
        """The :class:`~pcsite_lite.confine.IsolationPolicy` these settings describe."""
        from pcsite_lite.confine import IsolationPolicy

        return IsolationPolicy(
            self.isolation,
            trusted=self.trusted,
            deadline_ms=self.deadline_ms,
            per_packet_ms=self.per_packet_ms,
            memory_mb=self.memory_mb,
            cpu_percent=self.cpu_percent,
            cpus=frozenset(self.cpus) or None,
            spin_us=self.spin_us,
        )


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """A validated site configuration."""

    name: str
    public_ip: str
    public_dev: str
    workers: int
    mode: str  #: "site" (the pipeline) or "bare" (benchmark baseline: forward unchanged)
    bare_next_hop: str | None
    fis_url: str
    repository: str | None
    undeployed: str  #: what a circuit/registration whose service has no code runs
    state_dir: str
    isp_prefixes: tuple[str, ...]
    dataplane: DataplaneConfig
    control: ControlConfig
    limits: Limits = field(default_factory=Limits)  #: ``[limits]``: the control API's bounds
    tls: TlsConfig | None = None  #: ``[tls]``: HTTPS on the control API (None: plain HTTP)
    source: str = field(default="", compare=False)  #: the file it was read from
    metering: MeteringConfig = MeteringConfig("", 0.5)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    cluster: Any = None  #: ``[cluster]`` (pcsite_lite.cluster.config.ClusterConfig) or None

    def tun_name(self, index: int) -> str:
        return f"{self.dataplane.tun_prefix}{index}"


def _get(doc: dict[str, Any], section: str, key: str, typ: type | tuple[type, ...], default: Any,
         *, required: bool = False) -> Any:  # fmt: skip
    sec = doc.get(section, {})
    if not isinstance(sec, dict):
        raise ConfigError(section, "must be a table")
    if key not in sec:
        if required:
            raise ConfigError(f"{section}.{key}", "is required")
        return default
    v = sec[key]
    ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, float, (int, float)))
    if not ok:
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        msg = f"must be {names}, got {type(v).__name__}"
        if required:
            raise ConfigError(f"{section}.{key}", msg)
        _report(f"{section}.{key}", msg)  # recorded; the default lets the rest be checked
        return default
    return v


def _ipv4(key: str, v: str) -> str:
    try:
        return str(ipaddress.IPv4Address(v))
    except ValueError:
        raise ConfigError(key, f"{v!r} is not an IPv4 address") from None


def _range(key: str, v: int | float, lo: float, hi: float) -> bool:
    """Whether ``v`` is in range; if not, the mistake is reported (see :func:`_report`)."""
    if not lo <= v <= hi:
        _report(key, f"must be in {lo}..{hi}, got {v}")
        return False
    return True


def _check_fis_credentials(url: str) -> None:
    """A FIS reached over the network is ACL-protected: the URL must name the site's user."""
    if not url.startswith(("redis:", "rediss:", "redis+sentinel:")):
        return  # sqlite: a local file; unix: a local socket (file permissions)
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError as exc:
        raise ConfigError("site.fis", f"is not a valid URL: {exc}") from None
    if not user or not password:
        raise ConfigError(
            "site.fis",
            "a Redis FIS over the network needs the site's ACL credentials: "
            "redis://USER:PASSWORD@host:port/db (the server's default user is disabled)",
        )


def _online_cpus() -> set[int] | None:
    """The machine's online vCPUs (None where the platform cannot tell)."""
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
    except OSError:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


_DATAPLANE_KEYS: Final = frozenset({
    "tun_prefix", "mtu", "buckets", "table_base", "mark_base", "rule_pref", "nft_table",
    "restart_delay", "tx", "cpus", "busy_poll_us", "batch", "queue_len", "native",
})  # fmt: skip
_CONTROL_KEYS: Final = frozenset(
    {"listen", "admin_token", "psps", "trust_anchor_file", "trust_anchor", "max_body"}
)


def _table(doc: dict[str, Any], section: str) -> dict[str, Any]:
    sec = doc.get(section, {})
    return sec if isinstance(sec, dict) else {}


def parse(
    doc: dict[str, Any], *, source: str = "", base_dir: Path | None = None, text: str = ""
) -> SiteConfig:
    """Validate a parsed TOML document (``text``, when given, locates mistakes by line).

    Raises one :class:`ConfigError` listing every mistake found (see the module docstring).
    """
    found: list[ConfigError] = []
    token = _found.set(found)
    try:
        known = {"site", "dataplane", "control", "metering", "limits", "tls", "services",
                 "cluster"}  # fmt: skip
        for k in sorted(set(doc) - known):
            _report(k, f"unknown section (known: {', '.join(sorted(known))})")
        cfg: SiteConfig | None = None
        try:
            cfg = _parse(doc, source, base_dir or Path.cwd())
        except ConfigError as exc:
            found.append(exc)
        # sections after the one that stopped are still checked, each on its own
        for check in (
            lambda: _unknown("dataplane", _table(doc, "dataplane"), _DATAPLANE_KEYS),
            lambda: _unknown("control", _table(doc, "control"), _CONTROL_KEYS),
            lambda: _limits(doc),
            lambda: _metering(doc, "/", base_dir or Path.cwd()),
            lambda: _services(doc),
        ):
            if cfg is None:
                try:
                    check()
                except ConfigError as exc:
                    found.append(exc)
    finally:
        _found.reset(token)
    unique: list[ConfigError] = []
    for e in found:  # a section checked twice reports its mistakes once
        if all((e.key, e.message) != (u.key, u.message) for u in unique):
            unique.append(e)
    if unique:
        raise ConfigError.of(unique, text)
    assert cfg is not None
    return cfg


def _parse(doc: dict[str, Any], source: str, base: Path) -> SiteConfig:

    if isinstance(doc.get("site", {}), dict):
        _unknown("site", doc.get("site", {}),
                 {"name", "public_ip", "public_dev", "workers", "mode", "bare_next_hop", "fis",
                  "state_dir", "repository", "undeployed", "isp_prefixes",
                  "allow_any_address"})  # fmt: skip
    name = _get(doc, "site", "name", str, None, required=True)
    if not _NAME_RE.match(name):
        raise ConfigError("site.name", "1-64 of letters, digits, '.', '_', '-'")
    public_ip = _ipv4("site.public_ip", _get(doc, "site", "public_ip", str, None, required=True))
    if ipaddress.IPv4Address(public_ip) not in ipaddress.IPv4Network("198.18.0.0/15") and not (
        _get(doc, "site", "allow_any_address", bool, False)
    ):
        raise ConfigError(
            "site.public_ip", f"{public_ip} is outside 198.18.0.0/15 (set allow_any_address)"
        )
    public_dev = _get(doc, "site", "public_dev", str, "lo")
    if not _IFNAME_RE.match(public_dev):
        raise ConfigError("site.public_dev", f"{public_dev!r} is not an interface name")
    workers = _get(doc, "site", "workers", int, 1)
    _range("site.workers", workers, 1, 64)
    mode = _get(doc, "site", "mode", str, "site")
    if mode not in MODES:
        raise ConfigError("site.mode", f"must be one of {', '.join(MODES)}")
    bare_next_hop = _get(doc, "site", "bare_next_hop", str, None)
    if bare_next_hop is not None:
        bare_next_hop = _ipv4("site.bare_next_hop", bare_next_hop)
    if mode == "bare" and bare_next_hop is None:
        raise ConfigError("site.bare_next_hop", "is required in bare mode")
    fis_url = _get(doc, "site", "fis", str, "")
    state_dir = _get(doc, "site", "state_dir", str, f"/var/lib/pcsite/{name}")
    if not fis_url:
        fis_url = f"sqlite://{Path(state_dir) / 'fis.db'}"
    if not fis_url.startswith(("sqlite:", "redis:", "rediss:", "redis+sentinel:", "unix:")):
        raise ConfigError(
            "site.fis", "must be a sqlite:, redis:, rediss:, redis+sentinel: or unix: URL"
        )
    _check_fis_credentials(fis_url)
    repository = _get(doc, "site", "repository", str, None)
    if repository is not None and not Path(repository).is_absolute():
        repository = str(base / repository)
    undeployed = _get(doc, "site", "undeployed", str, "noop")
    if undeployed not in UNDEPLOYED:
        raise ConfigError("site.undeployed", f"must be one of {', '.join(UNDEPLOYED)}")
    prefixes = _get(doc, "site", "isp_prefixes", list, ["198.18.0.0/15"])
    for p in prefixes:
        try:
            ipaddress.IPv4Network(p)
        except (ValueError, TypeError):
            raise ConfigError("site.isp_prefixes", f"{p!r} is not an IPv4 prefix") from None

    d = "dataplane"
    tun_prefix = _get(doc, d, "tun_prefix", str, "pcst")
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]{0,12}$", tun_prefix):
        raise ConfigError("dataplane.tun_prefix", "1-13 of letters, digits, '_', '-'")
    dp = DataplaneConfig(
        tun_prefix=tun_prefix,
        mtu=_get(doc, d, "mtu", int, 1500),
        buckets=_get(doc, d, "buckets", int, 256),
        table_base=_get(doc, d, "table_base", int, 2000),
        mark_base=_get(doc, d, "mark_base", int, 0x5C000),
        rule_pref=_get(doc, d, "rule_pref", int, 50),
        nft_table=_get(doc, d, "nft_table", str, "pcsite"),
        restart_delay=float(_get(doc, d, "restart_delay", (int, float), 0.5)),
        tx=_get(doc, d, "tx", str, "tun"),
        cpus=tuple(_get(doc, d, "cpus", list, [])),
        busy_poll_us=_get(doc, d, "busy_poll_us", int, 50),
        batch=_get(doc, d, "batch", int, 256),
        queue_len=_get(doc, d, "queue_len", int, 1000),
        native=_get(doc, d, "native", bool, True),
    )
    _range("dataplane.mtu", dp.mtu, 576, 65535)
    _range("dataplane.buckets", dp.buckets, 1, 65536)
    _range("dataplane.table_base", dp.table_base, 1, 0xFFFF0000 - 64)
    _range("dataplane.mark_base", dp.mark_base, 1, 0xFFFF0000)
    _range("dataplane.rule_pref", dp.rule_pref, 1, 90)
    _range("dataplane.restart_delay", dp.restart_delay, 0, 60)
    _range("dataplane.busy_poll_us", dp.busy_poll_us, 0, 100_000)
    _range("dataplane.batch", dp.batch, 1, 1024)
    _range("dataplane.queue_len", dp.queue_len, 16, 65536)
    online = _online_cpus()
    for cpu in dp.cpus:
        if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 0:
            raise ConfigError("dataplane.cpus", f"must be a list of vCPU numbers, got {cpu!r}")
        if online is not None and cpu not in online:
            raise ConfigError(
                "dataplane.cpus", f"vCPU {cpu} is not online (online: {sorted(online)})"
            )
    if dp.tx not in ("tun", "raw"):
        raise ConfigError("dataplane.tx", "must be tun or raw")
    if not _NAME_RE.match(dp.nft_table):
        raise ConfigError("dataplane.nft_table", "1-64 of letters, digits, '.', '_', '-'")
    _unknown(d, doc.get(d, {}), _DATAPLANE_KEYS)

    c = "control"
    listen = _get(doc, c, "listen", str, "127.0.0.1:8080")
    host, sep, port_s = listen.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError("control.listen", f"{listen!r} is not host:port")
    _ipv4("control.listen", host)
    admin = _get(doc, c, "admin_token", str, None, required=True)
    if len(admin) < MIN_TOKEN_LEN:
        raise ConfigError("control.admin_token", f"needs at least {MIN_TOKEN_LEN} characters")
    psps_doc = _get(doc, c, "psps", dict, {})
    psps: list[PspConfig] = []
    tokens = {admin}
    for pname, pdoc in psps_doc.items():
        key = f"control.psps.{pname}"
        if not _NAME_RE.match(pname) or pname == "isp":
            raise ConfigError(key, "PSP names are 1-64 of [A-Za-z0-9._-]; 'isp' is reserved")
        if not isinstance(pdoc, dict):
            raise ConfigError(key, "must be a table")
        tok = pdoc.get("token")
        if not isinstance(tok, str) or len(tok) < MIN_TOKEN_LEN:
            raise ConfigError(f"{key}.token", f"a string of at least {MIN_TOKEN_LEN} characters")
        if tok in tokens:
            raise ConfigError(f"{key}.token", "is the same as another credential")
        tokens.add(tok)
        sk = pdoc.get("signing_key")
        raw = None
        if sk is not None:
            try:
                raw = bytes.fromhex(sk)
            except (ValueError, TypeError):
                raise ConfigError(f"{key}.signing_key", "must be hex") from None
            if len(raw) != 32:
                raise ConfigError(f"{key}.signing_key", "an Ed25519 public key is 32 bytes")
        _unknown(key, pdoc, {"token", "signing_key"})
        psps.append(PspConfig(pname, tok, raw))
    anchor = None
    anchor_file = _get(doc, c, "trust_anchor_file", str, None)
    if anchor_file is not None:
        p = Path(anchor_file)
        if not p.is_absolute():
            p = base / p
        try:
            anchor = p.read_text()
        except OSError as exc:
            raise ConfigError("control.trust_anchor_file", f"cannot read {p}: {exc}") from None
    anchor = _get(doc, c, "trust_anchor", str, anchor)
    limits = _limits(doc)
    if "max_body" in doc.get(c, {}):  # the older spelling of limits.max_body
        old = _get(doc, c, "max_body", int, None)
        _range("control.max_body", old, *LIMIT_RANGES["max_body"])
        if "max_body" in doc.get("limits", {}) and old != limits.max_body:
            raise ConfigError("control.max_body", "differs from limits.max_body (drop one)")
        limits = replace(limits, max_body=old)
    max_body = limits.max_body
    _unknown(c, doc.get(c, {}), _CONTROL_KEYS)
    ctl = ControlConfig(host, int(port_s), admin, tuple(psps), anchor, max_body)
    metering = _metering(doc, state_dir, base)
    services = _services(doc)
    return SiteConfig(
        name=name,
        public_ip=public_ip,
        public_dev=public_dev,
        workers=workers,
        mode=mode,
        bare_next_hop=bare_next_hop,
        fis_url=fis_url,
        repository=repository,
        undeployed=undeployed,
        state_dir=state_dir,
        isp_prefixes=tuple(prefixes),
        dataplane=dp,
        control=ctl,
        limits=limits,
        tls=_tls(doc, base),
        source=source,
        metering=metering,
        services=services,
        cluster=_cluster(doc),
    )


def _metering(doc: dict[str, Any], state_dir: str, base: Path) -> MeteringConfig:
    m = "metering"
    ledger = _get(doc, m, "ledger", str, str(Path(state_dir) / "usage.ledger"))
    if not Path(ledger).is_absolute():
        ledger = str(base / ledger)
    interval = float(_get(doc, m, "interval", (int, float), 0.5))
    _range("metering.interval", interval, 0.05, 60)
    _unknown(m, doc.get(m, {}), {"ledger", "interval"})
    return MeteringConfig(ledger, interval)


def _limits(doc: dict[str, Any]) -> Limits:
    """``[limits]``: every key optional (defaults in :class:`Limits`), range-checked."""
    sec = doc.get("limits", {})
    if not isinstance(sec, dict):
        raise ConfigError("limits", "must be a table")
    _unknown("limits", sec, Limits.keys(), f"unknown key (known: {', '.join(Limits.keys())})")
    values: dict[str, Any] = {}
    defaults = Limits()
    for key in Limits.keys():
        default = getattr(defaults, key)
        typ: type | tuple[type, ...] = (int, float) if isinstance(default, float) else int
        v = _get(doc, "limits", key, typ, default)
        if not _range(f"limits.{key}", v, *LIMIT_RANGES[key]):
            v = default  # reported; the cross-checks below see a sane value
        values[key] = float(v) if isinstance(default, float) else v
    lim = Limits(**values)
    if lim.max_connections_per_client > lim.max_connections:
        raise ConfigError("limits.max_connections_per_client", "exceeds limits.max_connections")
    if lim.header_timeout > lim.request_timeout:
        raise ConfigError("limits.header_timeout", "exceeds limits.request_timeout")
    return lim


def _tls(doc: dict[str, Any], base: Path) -> TlsConfig | None:
    """``[tls]``: absent means plain HTTP; present needs a readable certificate and key that
    belong together (loaded here, so a mistake fails ``check-config``, not the first client)."""
    if "tls" not in doc:
        return None
    sec = doc["tls"]
    if not isinstance(sec, dict):
        raise ConfigError("tls", "must be a table")
    _unknown("tls", sec, {"cert", "key"}, "unknown key (known: cert, key)")
    paths = {}
    for k in ("cert", "key"):
        p = Path(_get(doc, "tls", k, str, None, required=True))
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ConfigError(f"tls.{k}", f"cannot read {p}")
        paths[k] = str(p)
    tls = TlsConfig(paths["cert"], paths["key"])
    import ssl

    try:
        tls.server_context()
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError("tls.cert", f"{paths['cert']} with {paths['key']}: {exc}") from None
    return tls


def _cluster(doc: dict[str, Any]) -> Any:
    from pcsite_lite.cluster.config import parse_cluster

    return parse_cluster(doc.get("cluster"), ConfigError)


def _services(doc: dict[str, Any]) -> ServicesConfig:
    s = "services"
    isolation = _get(doc, s, "isolation", str, "process")
    if isolation not in ("process", "inprocess"):
        raise ConfigError("services.isolation", "must be process or inprocess")
    trusted = _get(doc, s, "trusted", list, [])
    for t in trusted:
        if not isinstance(t, str) or t.count("/") != 1:
            raise ConfigError("services.trusted", f"{t!r} is not psp/service")
    cfg = ServicesConfig(
        isolation=isolation,
        trusted=tuple(trusted),
        deadline_ms=float(_get(doc, s, "deadline_ms", (int, float), 20.0)),
        per_packet_ms=float(_get(doc, s, "per_packet_ms", (int, float), 1.0)),
        packet_budget_ms=float(_get(doc, s, "packet_budget_ms", (int, float), 10.0)),
        memory_mb=_get(doc, s, "memory_mb", int, 512),
        cpu_percent=_get(doc, s, "cpu_percent", int, 100),
        replicate_per_packet=_get(doc, s, "replicate_per_packet", int, 16),
        replicate_per_second=_get(doc, s, "replicate_per_second", int, 10_000),
        cpus=tuple(_get(doc, s, "cpus", list, [])),
        spin_us=_get(doc, s, "spin_us", int, 200),
    )
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1024
               for c in cfg.cpus):  # fmt: skip
        raise ConfigError("services.cpus", "a list of CPU numbers")
    _range("services.deadline_ms", cfg.deadline_ms, 1, 10_000)
    _range("services.per_packet_ms", cfg.per_packet_ms, 0, 1_000)
    _range("services.packet_budget_ms", cfg.packet_budget_ms, 0.1, 1_000)
    _range("services.memory_mb", cfg.memory_mb, 64, 1 << 20)
    _range("services.cpu_percent", cfg.cpu_percent, 1, 6400)
    _range("services.replicate_per_packet", cfg.replicate_per_packet, 1, 64)
    _range("services.replicate_per_second", cfg.replicate_per_second, 1, 10_000_000)
    _range("services.spin_us", cfg.spin_us, 0, 10_000)
    known = {"isolation", "trusted", "deadline_ms", "per_packet_ms", "memory_mb", "cpu_percent",
             "replicate_per_packet", "replicate_per_second", "cpus",
             "packet_budget_ms", "spin_us"}  # fmt: skip
    _unknown(s, doc.get(s, {}), known)
    return cfg


def load(path: str | Path) -> SiteConfig:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            "", f"{p} is not valid TOML: {exc}", int(m.group(1)) if m else None
        ) from None
    return parse(doc, source=str(p), base_dir=p.parent, text=text)
