"""Batched rtnetlink requests, sent on a socket bound to the caller's network namespace.

Building a testbed is thousands of tiny netlink requests (create a veth, add an address, add
a route). Sending them one by one through a general-purpose library costs about a millisecond
each; here the requests of one namespace are encoded up front, sent in a few large
``sendmsg`` calls and their acknowledgements collected afterwards, which brings a request down
to tens of microseconds. Only the handful of message types the testbed needs are encoded; the
kernel's answer to each one is checked, and a failure names the request it belongs to.

Interface indexes are chosen by the caller (the kernel accepts ``ifi_index`` on creation), so a
whole namespace can be configured without a single lookup round trip.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

__all__ = ["Batch", "NetlinkError"]

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_NEWRULE = 32
RTM_DELRULE = 33
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

IFF_UP = 0x1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_TXQLEN = 13
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_TABLE = 15
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_TABLE = 15
FRA_FWMASK = 16
FR_ACT_TO_TBL = 1
RTPROT_STATIC = 4
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_CHUNK = 48 * 1024


class NetlinkError(OSError):
    """A netlink request was refused; ``what`` says which request, ``errno`` why."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.what = what


def _nla(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _ip(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def _str(s: str) -> bytes:
    return s.encode() + b"\0"


@dataclass
class Batch:
    """Requests for one network namespace, sent together by :meth:`commit`.

    The socket is opened by :meth:`commit` in the namespace of the calling thread, so a batch
    built anywhere is applied wherever it is committed.
    """

    label: str = ""
    _msgs: list[tuple[bytes, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._msgs)

    def _add(self, mtype: int, flags: int, body: bytes, what: str) -> None:
        self._msgs.append(
            (struct.pack("=HH", mtype, NLM_F_REQUEST | NLM_F_ACK | flags) + body, what)
        )

    # --- links ------------------------------------------------------------------------------
    def veth(
        self, name: str, index: int, peer: str, peer_index: int, peer_ns_fd: int, alias: str = ""
    ) -> None:
        """Create veth ``name`` here (up) with ``peer`` (down) in the namespace ``peer_ns_fd``.

        The peer cannot be created up (the kernel opens it before the pair is joined and
        refuses with ENOTCONN): bring it up with :meth:`up` in its namespace.
        """
        peer_msg = _IFINFOMSG.pack(0, 0, peer_index, 0, 0) + _nla(IFLA_IFNAME, _str(peer))
        peer_msg += _nla(IFLA_NET_NS_FD, _u32(peer_ns_fd))
        info = _nla(IFLA_INFO_KIND, _str("veth")) + _nla(
            IFLA_INFO_DATA, _nla(VETH_INFO_PEER, peer_msg)
        )
        body = _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP) + _nla(IFLA_IFNAME, _str(name))
        body += _nla(IFLA_LINKINFO, info)
        self._add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name}<->{peer}")
        if alias:
            self.alias(index, alias)

    def bridge(self, name: str, index: int) -> None:
        """Create an up Linux bridge ``name`` with ``index``."""
        body = _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP) + _nla(IFLA_IFNAME, _str(name))
        body += _nla(IFLA_LINKINFO, _nla(IFLA_INFO_KIND, _str("bridge")))
        self._add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")

    def up(self, index: int, master: int = 0, txqlen: int = 0) -> None:
        """Set link ``index`` up (and enslave it to ``master``, set its queue length if given)."""
        body = _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP)
        if master:
            body += _nla(IFLA_MASTER, _u32(master))
        if txqlen:
            body += _nla(IFLA_TXQLEN, _u32(txqlen))
        self._add(RTM_NEWLINK, 0, body, f"set link {index} up")

    def alias(self, index: int, alias: str) -> None:
        """Mark link ``index`` with an ownership alias (``ip link`` shows it as ``alias``)."""
        body = _IFINFOMSG.pack(0, 0, index, 0, 0) + _nla(IFLA_IFALIAS, _str(alias))
        self._add(RTM_NEWLINK, 0, body, f"set alias of link {index}")

    # --- addresses and routes ---------------------------------------------------------------
    def addr(self, index: int, address: str, prefixlen: int) -> None:
        """Add ``address/prefixlen`` to link ``index``."""
        body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _nla(IFA_LOCAL, _ip(address)) + _nla(IFA_ADDRESS, _ip(address))
        self._add(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add {address}/{prefixlen}")

    def route(
        self,
        dst: str,
        gateway: str | None = None,
        oif: int = 0,
        table: int = RT_TABLE_MAIN,
        src: str | None = None,
        delete: bool = False,
    ) -> None:
        """Add (or delete) a unicast route to ``dst`` (CIDR) via ``gateway`` and/or ``oif``."""
        net = ipaddress.IPv4Network(dst)
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(
            socket.AF_INET,
            net.prefixlen,
            0,
            0,
            table if table < 256 else 0,
            RTPROT_STATIC,
            scope,
            RTN_UNICAST,
            0,
        )
        if net.prefixlen:
            body += _nla(RTA_DST, net.network_address.packed)
        if gateway:
            body += _nla(RTA_GATEWAY, _ip(gateway))
        if oif:
            body += _nla(RTA_OIF, _u32(oif))
        if src:
            body += _nla(RTA_PREFSRC, _ip(src))
        body += _nla(RTA_TABLE, _u32(table))
        what = f"{'delete' if delete else 'add'} route {dst} via {gateway or oif} table {table}"
        if delete:
            self._add(RTM_DELROUTE, 0, body, what)
        else:
            self._add(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, what)

    def rule_fwmark(self, mark: int, table: int, priority: int, delete: bool = False) -> None:
        """Policy rule: packets with firewall mark ``mark`` look up routing table ``table``."""
        body = _RTMSG.pack(
            socket.AF_INET, 0, 0, 0, table if table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0
        )
        body += _nla(FRA_PRIORITY, _u32(priority)) + _nla(FRA_FWMARK, _u32(mark))
        body += _nla(FRA_FWMASK, _u32(0xFFFFFFFF)) + _nla(FRA_TABLE, _u32(table))
        if delete:
            self._add(RTM_DELRULE, 0, body, f"delete rule fwmark {mark:#x}")
        else:
            self._add(
                RTM_NEWRULE,
                NLM_F_CREATE | NLM_F_EXCL,
                body,
                f"add rule fwmark {mark:#x} table {table}",
            )

    # --- sending ------------------------------------------------------------------------------
    def commit(self) -> None:
        """Send every request on a netlink socket of the calling thread's namespace.

        Raises :class:`NetlinkError` for the first refused request (all are attempted).
        """
        if not self._msgs:
            return
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, 0))
            failures: list[tuple[int, str]] = []
            seq = 0
            i = 0
            while i < len(self._msgs):
                chunk = bytearray()
                pending: dict[int, str] = {}
                while i < len(self._msgs) and len(chunk) < _CHUNK:
                    head_body, what = self._msgs[i]
                    seq += 1
                    mtype, flags = struct.unpack_from("=HH", head_body)
                    body = head_body[4:]
                    chunk += _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, flags, seq, 0)
                    chunk += body
                    pending[seq] = what
                    i += 1
                sock.send(bytes(chunk))
                while pending:
                    data = sock.recv(1 << 20)
                    off = 0
                    while off + _NLMSGHDR.size <= len(data):
                        length, mtype, _flags, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
                        if mtype == NLMSG_ERROR:
                            (code,) = _ERR.unpack_from(data, off + _NLMSGHDR.size)
                            what = pending.pop(rseq, "?")
                            if code:
                                failures.append((-code, what))
                        off += (length + 3) & ~3 if length else len(data)
            if failures:
                code, what = failures[0]
                more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
                raise NetlinkError(code, f"{self.label}: {what}{more}")
        finally:
            sock.close()
