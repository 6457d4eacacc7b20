"""The control API as a pure request -> response function (no sockets; :mod:`.server` serves it).

One route table drives three things, so they cannot drift apart: dispatch, JSON body
validation and the OpenAPI 3 description served at ``/openapi.json``.

Authorisation has two layers. Here: every route needs a bearer credential; ISP routes need the
ISP's; a ``/v1/psps/{psp}/...`` route needs that PSP's credential (or the ISP's). In the backend:
objects with site-wide names (circuit labels, service IDs, prefixes) are checked against their
owner, and another PSP's object answers as if it did not exist.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pcsock.httpserver import Request, Response, retry_after_header

from .auth import Credentials, Principal
from .errors import CODES, ApiError, Json
from .limits import DEFAULT_LIMITS, Limits, RateLimiter, check_body_shape

if TYPE_CHECKING:  # the one backend (its methods are what the routes call)
    from .site_backend import SiteBackend

__all__ = [
    "API_VERSION",
    "DEFAULT_MAX_BODY",
    "ROUTES",
    "ControlApp",
    "Request",
    "Response",
    "Route",
    "openapi_document",
]

API_VERSION: Final = "1.0.0"
#: Largest request body accepted (service code uploads are the big ones).
DEFAULT_MAX_BODY: Final = DEFAULT_LIMITS.max_body
MAX_LIFETIME: Final = 7 * 24 * 3600.0
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_RE: Final = re.compile(r"^[^\x00-\x1f]{1,256}$")


# --- body schemas ---------------------------------------------------------------------------

FieldType = Literal["string", "integer", "number", "boolean", "object", "array", "any"]


@dataclass(frozen=True, slots=True)
class Field:
    """One JSON body field: its type, whether required, a description (for OpenAPI)."""

    name: str
    type: FieldType
    description: str
    required: bool = True
    items: FieldType | None = None  #: element type of an array

    def schema(self) -> dict[str, Json]:
        if self.type == "any":
            out: dict[str, Json] = {"description": self.description}
        else:
            out = {"type": self.type, "description": self.description}
        if self.items:
            out["items"] = {"type": self.items} if self.items != "any" else {}
        return out


_PY_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _check_body(fields: tuple[Field, ...], doc: Json) -> dict[str, Json]:
    if not isinstance(doc, dict):
        raise ApiError("bad_json", "the request body must be a JSON object")
    known = {f.name for f in fields}
    extra = sorted(set(doc) - known)
    if extra:
        raise ApiError("bad_field", f"unknown field(s): {', '.join(extra)}")
    for f in fields:
        if f.name not in doc:
            if f.required:
                raise ApiError("missing_field", f"field {f.name!r} is required")
            continue
        v = doc[f.name]
        if f.type == "any":
            continue
        ok = isinstance(v, _PY_TYPES[f.type])
        if f.type in ("integer", "number") and isinstance(v, bool):
            ok = False
        if not ok:
            raise ApiError("bad_field", f"field {f.name!r} must be a JSON {f.type}")
    return doc


# --- routes ---------------------------------------------------------------------------------

Auth = Literal["any", "isp", "psp"]
Handler = Callable[["ControlApp", Principal, dict[str, str], dict[str, Json]], tuple[int, Json]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  #: OpenAPI path template, e.g. ``/v1/psps/{psp}/circuits/{label}``
    operation_id: str
    summary: str
    auth: Auth
    handler: Handler
    body: tuple[Field, ...] | None = None
    ok_status: int = 200
    errors: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    text_response: bool = False

    @property
    def regex(self) -> re.Pattern[str]:
        pat = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        return re.compile(f"^{pat}$")

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


def _name(params: Mapping[str, str], key: str) -> str:
    v = params[key]
    if not _NAME_RE.match(v):
        raise ApiError("bad_request", f"{key} {v!r}: 1-64 of letters, digits, '.', '_', '-'")
    return v


def _label(params: Mapping[str, str]) -> int:
    v = params["label"]
    if not v.isdigit() or int(v) > 0xFFFFFFFF:
        raise ApiError("bad_request", f"label {v!r} is not a 32-bit unsigned integer")
    return int(v)


def _lifetime(body: Mapping[str, Json], default: float) -> float:
    v = body.get("lifetime", default)
    if not 0 < float(v) <= MAX_LIFETIME:
        raise ApiError("bad_field", f"lifetime must be in (0, {MAX_LIFETIME:.0f}] seconds")
    return float(v)


def _b64(body: Mapping[str, Json], key: str) -> bytes:
    try:
        return base64.b64decode(body[key], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError("bad_field", f"field {key!r} is not valid base64") from exc


def _prefix(text: str) -> str:
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as exc:
        raise ApiError("bad_field", f"{text!r} is not an IPv4 prefix: {exc}") from exc


def _fis_key(params: Mapping[str, str]) -> str:
    v = params["key"]
    if not _KEY_RE.match(v):
        raise ApiError("bad_request", "FIS keys are 1-256 printable characters")
    return v


# handlers: (app, who, params, body) -> (status, json) -------------------------------------


def _h_health(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.health()


def _h_status(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.status()


def _h_metrics(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.metrics_text()


def _h_usage_export(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    try:
        since = float(p["since"])
    except ValueError:
        raise ApiError("bad_request", f"since {p['since']!r}: unix seconds expected") from None
    if not math.isfinite(since):
        raise ApiError("bad_request", "since must be finite")
    return 200, app.backend.usage_export(since)


def _h_openapi(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, openapi_document()


def _h_whoami(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, {"role": who.role, "name": who.name}


def _h_upload(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    version = _name({"version": b["version"]}, "version")
    res = app.backend.upload_service(
        p["psp"], _name(p, "service"), version, _b64(b, "code"), _b64(b, "signature")
    )
    return 201, res


def _h_activate(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.activate_service(p["psp"], _name(p, "service"), b["version"])


def _h_enable(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.enable_service(p["psp"], _name(p, "service"))


def _h_services(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, {"services": app.backend.list_services(p["psp"])}


def _h_alloc(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    service = _name({"service": b["service"]}, "service")
    return 201, app.backend.allocate_circuit(p["psp"], service, _lifetime(b, 60.0))


def _h_install(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    cap = app.limits.max_out_hops
    if len(b["out"]) > cap:
        raise ApiError(
            "limit_exceeded", f"{len(b['out'])} out hops; a hop has at most {cap} "
            "(limits.max_out_hops)"
        )  # fmt: skip
    return 200, app.backend.install_hop(p["psp"], _label(p), b)


def _h_renew(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.renew_circuit(p["psp"], _label(p), _lifetime(b, 60.0))


def _h_teardown(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    app.backend.teardown_circuit(p["psp"], _label(p))
    return 204, None


def _h_circuit(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.get_circuit(p["psp"], _label(p))


def _h_circuits(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, {"circuits": app.backend.list_circuits(p["psp"])}


def _h_fis_put(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    app.backend.fis_put(p["psp"], _name(p, "service"), _fis_key(p), b["value"])
    return 204, None


def _h_fis_get(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, {"value": app.backend.fis_get(p["psp"], _name(p, "service"), _fis_key(p))}


def _h_fis_del(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    app.backend.fis_delete(p["psp"], _name(p, "service"), _fis_key(p))
    return 204, None


def _h_lpm_put(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    app.backend.fis_lpm_put(
        p["psp"], _name(p, "service"), _name(p, "table"), _prefix(b["prefix"]), b["value"]
    )
    return 204, None


def _h_lpm_del(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    app.backend.fis_lpm_delete(
        p["psp"], _name(p, "service"), _name(p, "table"), _prefix(b["prefix"])
    )
    return 204, None


def _h_isp_fis(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    app.backend.isp_fis_put(_name(p, "namespace"), _fis_key(p), b["value"])
    return 204, None


def _h_isp_lpm(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    if p["namespace"] != "isp":
        raise ApiError("not_found", "the ISP writes only its own FIS namespace, isp")
    app.backend.isp_fis_lpm_put(_name(p, "table"), _prefix(b["prefix"]), b["value"])
    return 204, None


def _h_sid(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    sid = b.get("service_id")
    if sid is not None and not 0 < sid <= 0xFFFFFF:
        raise ApiError("bad_field", "service_id must be in 1..16777215")
    service = _name({"service": b["service"]}, "service")
    redirect = _redirect_prefixes(b.get("redirect_prefixes", []))
    if redirect and not who.is_isp:
        # where a form-2 service may redirect its traffic is the ISP's decision
        raise ApiError("forbidden", "redirect_prefixes need the ISP's approval (ISP credential)")
    return 201, app.backend.register_service_id(p["psp"], service, sid, redirect_prefixes=redirect)


def _h_sid_del(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    v = p["service_id"]
    if not v.isdigit() or not 0 < int(v) <= 0xFFFFFF:
        raise ApiError("bad_request", "service_id must be in 1..16777215")
    app.backend.release_service_id(p["psp"], int(v))
    return 204, None


def _h_dest(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    psp = p["psp"]
    service = _name({"service": b["service"]}, "service")
    prefix = _prefix(b["prefix"])
    redirect = _redirect_prefixes(b.get("redirect_prefixes", []))
    if redirect and not who.is_isp:
        # where a destination's service may redirect its traffic is the ISP's decision
        raise ApiError("forbidden", "redirect_prefixes need the ISP's approval (ISP credential)")
    if app.trust_anchor is None:
        raise ApiError("not_configured", "this site has no DNSSEC trust anchor configured")
    from pcsock import ownership  # the SDK's validator (dnspython)

    try:
        claim = ownership.validate_proof(
            b["proof"], prefix, app.trust_anchor, app.clock(), owner=psp, service=service
        )
    except ownership.OwnershipError as exc:
        raise ApiError("ownership_rejected", f"{exc.reason}: {exc.detail}") from exc
    info = {
        "prefix": claim.prefix,
        "owner": claim.owner,
        "service": claim.service,
        "not_before": claim.not_before,
        "not_after": claim.not_after,
    }
    return 201, app.backend.register_destination(
        psp, service, prefix, info, redirect_prefixes=redirect, proof=b["proof"]
    )


def _redirect_prefixes(v: Json) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ApiError("bad_field", "redirect_prefixes must be a list of IPv4 prefixes")
    return [_prefix(x) for x in v]


def _h_dests(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, {"destinations": app.backend.list_destinations(p["psp"])}


def _h_usage(app: ControlApp, who: Principal, p: dict[str, str], b: dict[str, Json]) -> Any:
    return 200, app.backend.usage(p["psp"])


_P = "/v1/psps/{psp}"
_NF = ("not_found",)
_FIS = ("unavailable",)  # 503 while the FIS engine is unreachable (the message names it)
_FIS_NF = (*_NF, *_FIS)
#: The route table: dispatch, validation and OpenAPI all come from here.
ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/openapi.json", "getOpenapi", "This API's OpenAPI 3 description", "any",
          _h_openapi),
    Route("GET", "/v1/health", "getHealth", "Liveness of the site (workers up, FIS reachable)",
          "any", _h_health),
    Route("GET", "/v1/whoami", "getWhoami", "The caller's role and name", "any", _h_whoami),
    Route("GET", "/v1/status", "getStatus", "Site status: workers, buckets, tables (ISP)",
          "isp", _h_status),
    Route("GET", "/metrics", "getMetrics", "Prometheus text exposition (ISP)", "isp",
          _h_metrics, text_response=True),
    Route("GET", "/v1/isp/usage/{since}", "exportUsage",
          "The site's usage ledger from an interval start on, as a pcbill export (ISP)", "isp",
          _h_usage_export, errors=("not_configured",)),
    Route("GET", f"{_P}/services", "listServices", "The PSP's services and versions", "psp",
          _h_services),
    Route("POST", f"{_P}/services/{{service}}/versions", "uploadServiceVersion",
          "Upload a signed service version (content-addressed)", "psp", _h_upload,
          body=(Field("version", "string", "version name (immutable once uploaded)"),
                Field("code", "string", "base64 of the service module source"),
                Field("signature", "string", "base64 Ed25519 signature (pcsite_lite.repository."
                      "sign_service) by the PSP's registered signing key")),
          ok_status=201,
          errors=("bad_signature", "service_rejected", "conflict", "not_configured")),
    Route("POST", f"{_P}/services/{{service}}/activate", "activateServiceVersion",
          "Make an uploaded version the one the site runs", "psp", _h_activate,
          body=(Field("version", "string", "an uploaded version name"),),
          errors=(*_NF, "not_configured")),
    Route("POST", f"{_P}/services/{{service}}/enable", "enableService",
          "Re-enable a service the site disabled after repeated failures (its owner)", "psp",
          _h_enable, errors=_NF),
    Route("GET", f"{_P}/circuits", "listCircuits", "The PSP's circuit hops at this site",
          "psp", _h_circuits),
    Route("POST", f"{_P}/circuits", "allocateCircuit",
          "Allocate a locally unique incoming label for a new hop", "psp", _h_alloc,
          body=(Field("service", "string", "the PSP's service that processes the hop"),
                Field("lifetime", "number", "seconds until the allocation expires unless "
                      "installed/renewed (default 60)", required=False)),
          ok_status=201, errors=("unavailable",)),
    Route("GET", f"{_P}/circuits/{{label}}", "getCircuit", "One circuit hop", "psp",
          _h_circuit, errors=_NF),
    Route("PUT", f"{_P}/circuits/{{label}}", "installHop",
          "Install the hop: in key, out hop(s) or delivery, lifetime", "psp", _h_install,
          body=(Field("in_key", "string", "hex hop key (16-32 bytes) senders/previous hop MAC "
                      "with"),
                Field("out", "array", "out hops: objects {label, next_hop, key (hex)}; empty "
                      "for the last hop", items="object"),
                Field("deliver", "string", "final destination IPv4 (last hop only)",
                      required=False),
                Field("strip", "boolean", "strip the shim for a legacy receiver (last hop)",
                      required=False),
                Field("destination", "string", "the circuit's final destination IPv4 (any "
                      "hop; receiver-first precedence); defaults to deliver", required=False),
                Field("lifetime", "number", "seconds the hop lives (default 300)",
                      required=False)),
          errors=(*_NF, "gone", "limit_exceeded")),
    Route("POST", f"{_P}/circuits/{{label}}/renew", "renewHop", "Extend a hop's lifetime",
          "psp", _h_renew,
          body=(Field("lifetime", "number", "new lifetime from now, seconds", required=False),),
          errors=(*_NF, "gone")),
    Route("DELETE", f"{_P}/circuits/{{label}}", "teardownHop", "Tear the hop down", "psp",
          _h_teardown, ok_status=204, errors=_NF),
    Route("GET", f"{_P}/fis/{{service}}/kv/{{key}}", "getFisEntry",
          "Read a key-value FIS entry of the PSP's service namespace", "psp", _h_fis_get,
          errors=_FIS_NF),
    Route("PUT", f"{_P}/fis/{{service}}/kv/{{key}}", "putFisEntry",
          "Write a key-value FIS entry of the PSP's service namespace", "psp", _h_fis_put,
          body=(Field("value", "any", "any JSON value"),), ok_status=204, errors=_FIS),
    Route("DELETE", f"{_P}/fis/{{service}}/kv/{{key}}", "deleteFisEntry",
          "Delete a key-value FIS entry", "psp", _h_fis_del, ok_status=204, errors=_FIS_NF),
    Route("PUT", f"{_P}/fis/{{service}}/lpm/{{table}}", "putFisRoute",
          "Write a longest-prefix-match entry", "psp", _h_lpm_put,
          body=(Field("prefix", "string", "IPv4 prefix, e.g. 198.18.4.0/24"),
                Field("value", "any", "any JSON value")), ok_status=204, errors=_FIS),
    Route("DELETE", f"{_P}/fis/{{service}}/lpm/{{table}}", "deleteFisRoute",
          "Delete a longest-prefix-match entry", "psp", _h_lpm_del,
          body=(Field("prefix", "string", "IPv4 prefix"),), ok_status=204, errors=_FIS_NF),
    Route("PUT", "/v1/isp/fis/{namespace}/kv/{key}", "putIspFisEntry",
          "Publish ISP network information services may read (ISP)", "isp", _h_isp_fis,
          body=(Field("value", "any", "any JSON value"),), ok_status=204, errors=_FIS),
    Route("PUT", "/v1/isp/fis/{namespace}/lpm/{table}", "putIspFisRoute",
          "Publish a longest-prefix-match entry of ISP network information, e.g. link "
          "congestion (ISP; namespace isp)", "isp", _h_isp_lpm,
          body=(Field("prefix", "string", "IPv4 prefix, e.g. 198.18.4.0/24"),
                Field("value", "any", "any JSON value")), ok_status=204,
          errors=_FIS_NF),
    Route("POST", f"{_P}/service-ids", "registerServiceId",
          "Register a form-2 service ID for a service", "psp", _h_sid,
          body=(Field("service", "string", "the PSP's service"),
                Field("service_id", "integer", "the 24-bit ID wanted (site picks if absent)",
                      required=False),
                Field("redirect_prefixes", "array", "prefixes the service may redirect "
                      "(encapsulate or replicate) its packets to; ISP credential only",
                      required=False, items="string")),
          ok_status=201, errors=("conflict", "forbidden")),
    Route("DELETE", f"{_P}/service-ids/{{service_id}}", "releaseServiceId",
          "Release a form-2 service ID", "psp", _h_sid_del, ok_status=204, errors=_NF),
    Route("GET", f"{_P}/destinations", "listDestinations",
          "The PSP's destination (form-3) registrations", "psp", _h_dests),
    Route("POST", f"{_P}/destinations", "registerDestination",
          "Destination sign-up: validate a DNSSEC ownership proof, then divert the prefix",
          "psp", _h_dest,
          body=(Field("prefix", "string", "the IPv4 prefix to divert"),
                Field("service", "string", "the PSP's service to run on its traffic"),
                Field("proof", "string", "the DNSSEC proof (zone-file text, "
                      "pcsock.ownership.Proof)"),
                Field("redirect_prefixes", "array", "prefixes the service may redirect "
                      "(encapsulate or replicate) this traffic to; ISP credential only",
                      required=False, items="string")),
          ok_status=201,
          errors=("ownership_rejected", "conflict", "not_configured", "forbidden")),
    Route("GET", f"{_P}/usage", "getUsage", "Metered usage of the PSP's services", "psp",
          _h_usage),
)  # fmt: skip


# --- OpenAPI --------------------------------------------------------------------------------


def openapi_document() -> dict[str, Json]:
    """The OpenAPI 3.0 description of :data:`ROUTES`."""
    paths: dict[str, dict[str, Json]] = {}
    for r in ROUTES:
        op: dict[str, Json] = {
            "operationId": r.operation_id,
            "summary": r.summary,
            "security": [{"bearer": []}],
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in r.params
            ],
        }
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": [f.name for f in r.body if f.required],
                            "properties": {f.name: f.schema() for f in r.body},
                        }
                    }
                },
            }
        if r.ok_status == 204:
            ok: dict[str, Json] = {"description": "done"}
        elif r.text_response:
            ok = {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            ok = {
                "description": "ok",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        # every route can meet the connection-level limits and the rate limit
        codes = {"unauthenticated", "bad_request", "request_timeout", "headers_too_large",
                 "rate_limited", "too_many_connections", *r.errors}  # fmt: skip
        if r.auth != "any":
            codes.add("forbidden")
        if r.body is not None:
            codes |= {"bad_json", "missing_field", "bad_field", "body_too_large",
                      "limit_exceeded"}  # fmt: skip
        responses: dict[str, Json] = {str(r.ok_status): ok}
        for status in sorted({CODES[c] for c in codes}):
            names = sorted(c for c in codes if CODES[c] == status)
            responses[str(status)] = {
                "description": "error: " + ", ".join(names),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "PacketCloud site control API",
            "version": API_VERSION,
            "description": "PSP- and ISP-facing control of one PacketCloud site (paper §2.3).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string", "enum": sorted(CODES)},
                                "message": {"type": "string"},
                            },
                        }
                    },
                }
            },
        },
    }


# --- the app --------------------------------------------------------------------------------


def _json_response(status: int, doc: Json) -> Response:
    if status == 204:
        return Response(204, b"")
    return Response(status, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())


def error_response(err: ApiError) -> Response:
    """The JSON error response for ``err`` (with ``Retry-After`` when it has one)."""
    resp = _json_response(err.status, err.body())
    if err.retry_after is not None:
        return Response(resp.status, resp.body, resp.content_type,
                        (("retry-after", retry_after_header(err.retry_after)),))  # fmt: skip
    return resp


#: a service upload or activation (answered off the event loop: see ControlApp.offload)
_UPLOAD: Final = re.compile(r"^/v1/psps/[^/]+/services/[^/]+/(versions|activate)$")


class ControlApp:
    """Authenticates, authorises, validates and dispatches one request to the backend.

    ``trust_anchor`` (DS/DNSKEY zone-file text) enables destination sign-up; ``clock`` gives
    the validation time (seconds since the epoch). ``limits`` bound bodies and request rates
    (``max_body``, if given, overrides ``limits.max_body``); ``monotonic`` drives the rate
    limiter's token buckets.
    """

    def __init__(
        self,
        backend: SiteBackend,
        credentials: Credentials,
        *,
        trust_anchor: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        max_body: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.credentials = credentials
        self.trust_anchor = trust_anchor
        if max_body is not None:
            from dataclasses import replace

            limits = replace(limits, max_body=max_body)
        self.limits = limits
        self.clock = clock
        self.rate = RateLimiter(limits.rate, limits.burst, clock=monotonic)
        self._routes = [(r, r.regex) for r in ROUTES]

    @property
    def max_body(self) -> int:
        return self.limits.max_body

    def offload(self, req: Request) -> bool:
        """Whether the server should answer ``req`` off its event loop: a service upload,
        whose check runs provider code in a throw-away confined process and may take up to
        its time limit, and an activation, which verifies the version's code and signature
        and syncs (``fsync``) the repository's pointer files (milliseconds on a busy disk). (Both
        touch only the repository, whose writes are atomic files.)"""
        return req.method == "POST" and _UPLOAD.match(urlsplit(req.target).path) is not None

    def handle(self, req: Request) -> Response:
        """Answer one request; never raises."""
        try:
            return self._handle(req)
        except ApiError as err:
            return error_response(err)
        except Exception as exc:  # a bug: answer 500 with a code, never a traceback
            return error_response(ApiError("internal", f"{type(exc).__name__}"))

    def _handle(self, req: Request) -> Response:
        parts = urlsplit(req.target)
        path = parts.path
        matched: list[tuple[Route, re.Match[str]]] = []
        for route, rx in self._routes:
            m = rx.match(path)
            if m:
                matched.append((route, m))
        if not matched:
            raise ApiError("not_found", f"no route {path}")
        for route, m in matched:  # noqa: B007 (route and m are used after the loop)
            if route.method == req.method:
                break
        else:
            allowed = ", ".join(sorted({r.method for r, _ in matched}))
            raise ApiError("method_not_allowed", f"{req.method} {path}: allowed {allowed}")
        try:
            who = self.credentials.authenticate(req.headers.get("authorization"))
        except ApiError:  # guessing tokens costs the guesser's address its rate
            self.rate.take(("addr", req.client), f"address {req.client or '?'} (failed logins)")
            raise
        self.rate.take((who.role, who.name), f"credential {who.role}/{who.name}")
        params = {k: unquote(v) for k, v in m.groupdict().items()}
        if route.auth == "isp" and not who.is_isp:
            raise ApiError("forbidden", "only the ISP may call this")
        if route.auth == "psp":
            psp = params["psp"]
            if not who.may_act_for(psp):
                raise ApiError("forbidden", f"credential of {who.name!r} cannot act for {psp!r}")
            if psp not in self.credentials.psps:
                raise ApiError("not_found", f"no PSP {psp!r} at this site")
        if parts.query:
            try:
                parse_qs(parts.query, strict_parsing=True)
            except ValueError as exc:
                raise ApiError("bad_request", "malformed query string") from exc
        body: dict[str, Json] = {}
        if route.body is not None:
            if len(req.body) > self.max_body:
                raise ApiError(
                    "body_too_large", f"bodies are limited to {self.max_body} bytes "
                    "(limits.max_body)"
                )  # fmt: skip
            ctype = req.headers.get("content-type", "application/json").split(";")[0].strip()
            if ctype.lower() != "application/json":
                raise ApiError("unsupported_media_type", "send application/json")
            body = _check_body(route.body, check_body_shape(req.body, self.limits))
        elif req.body:
            raise ApiError("bad_request", f"{route.method} {route.path} takes no body")
        status, doc = route.handler(self, who, params, body)
        if route.text_response and isinstance(doc, str):
            return Response(status, doc.encode(), "text/plain; version=0.0.4; charset=utf-8")
        return _json_response(status, doc)
