"""A small synchronous client of the site control API (stdlib ``http.client``).

Part of the SDK: what a PSP's control plane (the circuit lookup service, ``pcsock lookupd``),
a prefix owner's sign-up (``pcsock signup submit``) and operators' scripts call. The site
(``pcsite_lite``) serves this API and re-exports this client as
``pcsite_lite.control.client``. Every refused call raises :class:`ControlError` carrying the
API's stable ``code`` (and, for 429, ``retry_after``). ``https://`` URLs verify the site's
certificate and name against ``ca_file`` (default: ``$PCSITE_CA_FILE``, else the system's
trust store).

>>> c = ControlClient("http://198.18.0.10:8080", token="...", psp="acme")  # doctest: +SKIP
>>> hop = c.allocate_circuit("srcroute")                                    # doctest: +SKIP
>>> c.install_hop(hop["label"], in_key=k1, out=[OutHop(7, "198.18.2.1", k2)])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["ControlClient", "ControlError", "OutHop", "SiteHandle"]


class ControlError(Exception):
    """A call the site refused (``code`` from the API) or could not be made (``code`` is
    ``"connection"`` or ``"bad_response"``)."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after  #: seconds the site asked to wait (429)
        super().__init__(f"{status} {code}: {message}")


@dataclass(frozen=True, slots=True)
class OutHop:
    """One outgoing hop of a circuit: next label, next hop address, next hop's key.

    ``key=None`` for a hop whose receiver verifies no MAC (e.g. a receiver host): the site
    sends the packet with an all-zero MAC field.
    """

    label: int
    next_hop: str
    key: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        key = self.key.hex() if self.key is not None else None
        return {"label": self.label, "next_hop": self.next_hop, "key": key}


class ControlClient:
    """Calls one site's control API as one principal (a PSP, or the ISP with ``psp=None``)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        psp: str | None = None,
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"control API URL must be http(s)://host[:port], got {base_url!r}")
        if u.scheme == "http" and ca_file is not None:
            raise ValueError(f"ca_file is for https:// URLs; {base_url!r} is plain HTTP")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.token = token
        self.psp = psp
        self.timeout = timeout
        self.tls: ssl.SSLContext | None = None
        if u.scheme == "https":
            ca_file = ca_file or os.environ.get("PCSITE_CA_FILE") or None
            self.tls = ssl.create_default_context(cafile=ca_file)  # verifies cert and name
            self.tls.minimum_version = ssl.TLSVersion.TLSv1_2

    def _connection(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.tls
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    # --- plumbing
    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """One call; the decoded JSON answer (None for 204; text if ``raw``)."""
        headers = {"authorization": f"Bearer {self.token}", "accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError(0, "connection", f"{self.host}:{self.port}: {exc}") from exc
        finally:
            conn.close()
        if resp.status >= 400:
            retry = resp.getheader("retry-after")
            try:
                err = json.loads(payload)["error"]
                raise ControlError(
                    resp.status, str(err["code"]), str(err["message"]),
                    retry_after=float(retry) if retry and retry.isdigit() else None,
                )  # fmt: skip
            except (ValueError, KeyError, TypeError) as exc:
                raise ControlError(
                    resp.status, "bad_response", payload[:200].decode("replace")
                ) from exc
        if resp.status == 204:
            return None
        if raw:
            return payload.decode()
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise ControlError(resp.status, "bad_response", "answer is not JSON") from exc

    def _p(self, rest: str) -> str:
        if self.psp is None:
            raise ValueError("this call needs a PSP (create the client with psp=...)")
        return f"/v1/psps/{quote(self.psp, safe='')}{rest}"

    # --- site
    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")

    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/v1/whoami")

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def metrics(self) -> str:
        return self.request("GET", "/metrics", raw=True)

    def usage_export(self, since: float) -> str:
        """The site's usage ledger from ``since`` on, as a ``pcbill import`` document (ISP)."""
        return self.request("GET", f"/v1/isp/usage/{since!r}")["export"]

    def openapi(self) -> dict[str, Any]:
        return self.request("GET", "/openapi.json")

    # --- services
    def upload_service(
        self, service: str, version: str, code: bytes, signature: bytes
    ) -> dict[str, Any]:
        """Upload a version signed with ``pcsite_lite.repository.sign_service``."""
        return self.request(
            "POST",
            self._p(f"/services/{quote(service, safe='')}/versions"),
            {
                "version": version,
                "code": base64.b64encode(code).decode(),
                "signature": base64.b64encode(signature).decode(),
            },
        )

    def activate_service(self, service: str, version: str) -> dict[str, Any]:
        return self.request(
            "POST", self._p(f"/services/{quote(service, safe='')}/activate"), {"version": version}
        )

    def enable_service(self, service: str) -> dict[str, Any]:
        """Re-enable a service the site disabled after repeated failures."""
        return self.request("POST", self._p(f"/services/{quote(service, safe='')}/enable"))

    def list_services(self) -> list[dict[str, Any]]:
        return self.request("GET", self._p("/services"))["services"]

    # --- circuits
    def allocate_circuit(self, service: str, lifetime: float = 60.0) -> dict[str, Any]:
        """A fresh incoming label at this site: ``{"label", "expires", ...}``."""
        return self.request(
            "POST", self._p("/circuits"), {"service": service, "lifetime": lifetime}
        )

    def install_hop(
        self,
        label: int,
        *,
        in_key: bytes,
        out: list[OutHop] | None = None,
        deliver: str | None = None,
        strip: bool | None = None,
        lifetime: float | None = None,
        destination: str | None = None,
    ) -> dict[str, Any]:
        """Install the hop at ``label``: ``out`` hops, or ``deliver`` to the final destination
        (last hop); ``destination`` names the circuit's final destination on any hop."""
        body: dict[str, Any] = {"in_key": in_key.hex(), "out": [o.to_json() for o in out or []]}
        if destination is not None:
            body["destination"] = destination
        if deliver is not None:
            body["deliver"] = deliver
        if strip is not None:
            body["strip"] = strip
        if lifetime is not None:
            body["lifetime"] = lifetime
        return self.request("PUT", self._p(f"/circuits/{label}"), body)

    def renew_circuit(self, label: int, lifetime: float = 300.0) -> dict[str, Any]:
        return self.request("POST", self._p(f"/circuits/{label}/renew"), {"lifetime": lifetime})

    def teardown_circuit(self, label: int) -> None:
        self.request("DELETE", self._p(f"/circuits/{label}"))

    def get_circuit(self, label: int) -> dict[str, Any]:
        return self.request("GET", self._p(f"/circuits/{label}"))

    def list_circuits(self) -> list[dict[str, Any]]:
        return self.request("GET", self._p("/circuits"))["circuits"]

    # --- FIS
    def fis_put(self, service: str, key: str, value: Any) -> None:
        self.request(
            "PUT",
            self._p(f"/fis/{quote(service, safe='')}/kv/{quote(key, safe='')}"),
            {"value": value},
        )

    def fis_get(self, service: str, key: str) -> Any:
        path = self._p(f"/fis/{quote(service, safe='')}/kv/{quote(key, safe='')}")
        return self.request("GET", path)["value"]

    def fis_delete(self, service: str, key: str) -> None:
        self.request("DELETE", self._p(f"/fis/{quote(service, safe='')}/kv/{quote(key, safe='')}"))

    def fis_lpm_put(self, service: str, table: str, prefix: str, value: Any) -> None:
        path = self._p(f"/fis/{quote(service, safe='')}/lpm/{quote(table, safe='')}")
        self.request("PUT", path, {"prefix": prefix, "value": value})

    def fis_lpm_delete(self, service: str, table: str, prefix: str) -> None:
        path = self._p(f"/fis/{quote(service, safe='')}/lpm/{quote(table, safe='')}")
        self.request("DELETE", path, {"prefix": prefix})

    def isp_fis_put(self, namespace: str, key: str, value: Any) -> None:
        path = f"/v1/isp/fis/{quote(namespace, safe='')}/kv/{quote(key, safe='')}"
        self.request("PUT", path, {"value": value})

    def isp_fis_lpm_put(self, table: str, prefix: str, value: Any) -> None:
        """The ISP publishes a longest-prefix entry in its namespace (``isp``), e.g. a link's
        congestion level in table ``congestion``."""
        path = f"/v1/isp/fis/isp/lpm/{quote(table, safe='')}"
        self.request("PUT", path, {"prefix": prefix, "value": value})

    # --- forms 2 and 3, usage
    def register_service_id(
        self,
        service: str,
        service_id: int | None = None,
        *,
        redirect_prefixes: list[str] | None = None,
    ) -> dict[str, Any]:
        """Form 2: bind a service ID to the PSP's ``service``. ``redirect_prefixes`` (where the
        service may redirect its packets) need the ISP credential (acting for the PSP)."""
        body: dict[str, Any] = {"service": service}
        if service_id is not None:
            body["service_id"] = service_id
        if redirect_prefixes:
            body["redirect_prefixes"] = list(redirect_prefixes)
        return self.request("POST", self._p("/service-ids"), body)

    def release_service_id(self, service_id: int) -> None:
        self.request("DELETE", self._p(f"/service-ids/{service_id}"))

    def register_destination(
        self,
        prefix: str,
        service: str,
        proof: str,
        *,
        redirect_prefixes: list[str] | None = None,
    ) -> dict[str, Any]:
        """Destination sign-up. ``redirect_prefixes`` (where the service may redirect this
        traffic) need the ISP's approval: only a client with the ISP credential may pass them
        (acting for the PSP, ``psp=<name>``)."""
        body: dict[str, Any] = {"prefix": prefix, "service": service, "proof": proof}
        if redirect_prefixes:
            body["redirect_prefixes"] = list(redirect_prefixes)
        return self.request("POST", self._p("/destinations"), body)

    def list_destinations(self) -> list[dict[str, Any]]:
        return self.request("GET", self._p("/destinations"))["destinations"]

    def usage(self) -> dict[str, Any]:
        return self.request("GET", self._p("/usage"))


class SiteHandle:
    """A PSP's handle on one site: what a PSP's control plane (an example service's
    ``control.py``, the demo, a script from the docs) does there, over the control API.

    ``signer(service, version, code) -> signature`` signs uploads for the site's service
    repository (e.g. ``functools.partial(pcsite_lite.repository.sign_service, key, psp)``);
    ``via(fn)`` runs each call (default: directly; a testbed passes a function that runs it in
    a network namespace). Circuits get ``lifetime`` seconds.

    >>> site = SiteHandle(client, public_ip="198.18.254.1", signer=sign)  # doctest: +SKIP
    >>> site.deploy("crypt", source)                                       # doctest: +SKIP
    >>> label = site.allocate_label("crypt")                               # doctest: +SKIP
    >>> site.install(label, "crypt", key, [OutHop(0, "198.18.32.2")])      # doctest: +SKIP
    """

    def __init__(
        self,
        client: ControlClient,
        *,
        public_ip: str,
        name: str = "",
        signer: Callable[[str, str, bytes], bytes] | None = None,
        via: Callable[[Callable[[], Any]], Any] | None = None,
        lifetime: float = 3600.0,
    ) -> None:
        self.client = client
        self.public_ip = public_ip
        self.name = name or public_ip
        self.signer = signer
        self.via = via or (lambda fn: fn())
        self.lifetime = lifetime
        self._versions: dict[str, int] = {}

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.client, method)
        return self.via(lambda: fn(*args, **kwargs))

    # --- services
    def deploy(self, service: str, source: str) -> str:
        """Upload ``source`` as the service's next version (signed) and activate it."""
        if self.signer is None:
            raise ValueError("deploy needs a signer (the PSP's repository signing key)")
        version = str(self._versions.get(service, 0) + 1)
        code = source.encode()
        self._call("upload_service", service, version, code, self.signer(service, version, code))
        self._call("activate_service", service, version)
        self._versions[service] = int(version)
        return version

    # --- destinations and service IDs
    def register_destination(
        self, prefix: str, service: str, proof: str, *, redirect_prefixes: list[str] | None = None
    ) -> dict[str, Any]:
        return self._call(
            "register_destination", prefix, service, proof, redirect_prefixes=redirect_prefixes
        )

    def register_service_id(
        self, service_id: int, service: str, redirect_prefixes: list[str] | None = None
    ) -> dict[str, Any]:
        """Form 2; ``redirect_prefixes`` need a handle with the ISP's credential."""
        return self._call(
            "register_service_id", service, service_id, redirect_prefixes=redirect_prefixes
        )

    def isp_lpm_put(self, table: str, prefix: str, value: Any) -> None:
        """The ISP's network information (a handle with the ISP's credential)."""
        self._call("isp_fis_lpm_put", table, prefix, value)

    # --- FIS
    def fis_put(self, service: str, key: str, value: Any) -> None:
        self._call("fis_put", service, key, value)

    def fis_get(self, service: str, key: str) -> Any:
        return self._call("fis_get", service, key)

    def fis_delete(self, service: str, key: str) -> None:
        self._call("fis_delete", service, key)

    def fis_lpm_put(self, service: str, table: str, prefix: str, value: Any) -> None:
        self._call("fis_lpm_put", service, table, prefix, value)

    def fis_lpm_delete(self, service: str, table: str, prefix: str) -> None:
        self._call("fis_lpm_delete", service, table, prefix)

    # --- circuits
    def allocate_label(self, service: str) -> int:
        return int(self._call("allocate_circuit", service, self.lifetime)["label"])

    def install(
        self,
        label: int,
        service: str,
        in_key: bytes,
        out: list[OutHop] | list[tuple[int, str, bytes | None]],
    ) -> None:
        """Install the hop at ``label`` (allocated for ``service``): its out hops; one whose
        key is None goes to a receiver that verifies no MAC."""
        hops = [o if isinstance(o, OutHop) else OutHop(*o) for o in out]
        self._call("install_hop", label, in_key=in_key, out=hops, lifetime=self.lifetime)

    def teardown(self, label: int) -> None:
        self._call("teardown_circuit", label)

    # --- usage
    def counters(self, service: str) -> dict[str, int]:
        """The service's counters at this site (``packets``, ``drops``, ...; all workers)."""
        return dict(self._call("usage")["services"].get(service, {}))
