"""Rule-based forwarding (paper §2.6.2; after Popa et al., "Rule-based forwarding", 2010).

A packet's forwarding is decided by a small **rule**: if-then-else over packet and site
attributes, with the actions forward, drop and update the metadata. The rule comes either

* from the circuit: FIS key ``"rule:<label>"`` of the packet's incoming label, or
* in the payload: ``b"RBF1" len(rule):u16 len(sig):u16 rule sig data`` (it stays on the
  packet, so every RBF site on the way evaluates it).

**Only certified rules run.** A rule is certified by an authority's Ed25519 signature over the
rule text. The PSP's control plane (``control.py``) verifies the signature against the
configured authority key and only then publishes the rule: as ``"rule:<label>"``, or for
payload rules as ``"cert:<crc32 of rule||sig, hex>"`` -> ``{"rule": text, "sig": hex}``. Per
packet the service runs a payload rule only if exactly that rule text *and* signature were
verified (byte-for-byte equality; the CRC only indexes). Anything else is dropped with a
reason: ``rbf_uncertified`` (unknown or tampered rule or signature), ``rbf_malformed``
(bad header), ``rbf_bad_rule`` (does not parse), ``rbf_no_rule``, or the rule's own
``drop <reason>`` (as ``rbf:<reason>``). The service never calls ``eval``: rules are parsed by
the small recursive-descent parser below into tuples and walked by :func:`run`; parsed rules
are kept per node (:data:`PARSED`, at most 256).

Rule language (whitespace-separated tokens; ``,`` ``(`` ``)`` stand alone)::

    stmt    := "if" cond "then" actions ["else" stmt] | actions
    actions := action ("," action)*
    action  := "forward" [ADDRESS] | "drop" [WORD] | "meta" INT
    cond    := conj ("or" conj)* ;  conj := neg ("and" neg)*
    neg     := "not" neg | "(" cond ")" | ATTR OP VALUE
    OP      := "==" | "!=" | "<" | "<=" | ">" | ">=" | "in"   (in: VALUE is a prefix a.b.c.d/n)
    ATTR    := src | proto | ttl | len | meta | label | form | site | congestion@ADDRESS

``src`` is the original sender (the shim's), ``len`` the data length, ``site`` the site's name
(FIS key ``"site"``), ``congestion@A`` the ISP's congestion level for address ``A``.
``forward A`` picks the circuit's out hop toward ``A``; ``forward`` alone keeps the circuit's
only out hop. Actions run left to right; a statement without a forward or drop forwards.
"""

import binascii
import struct

MAGIC = b"RBF1"
HEAD = struct.Struct("!4sHH")
OPS = ("==", "!=", "<=", ">=", "<", ">", "in")
ATTRS = ("src", "proto", "ttl", "len", "meta", "label", "form", "site")
PARSED: dict = {}  # rule text -> parsed rule (this node)
MAX_PARSED = 256
MAX_TOKENS = 512
MAX_DEPTH = 32


RuleError = ValueError  # services may not define classes: rule errors are ValueErrors


def tokenize(text):
    out = []
    for raw in text.replace(",", " , ").replace("(", " ( ").replace(")", " ) ").split():
        out.append(raw)
        if len(out) > MAX_TOKENS:
            raise RuleError("rule too long")
    return out


def ip_to_int(text):
    parts = text.split(".")
    if len(parts) != 4:
        raise RuleError("not an address: " + text)
    value = 0
    for p in parts:
        if not p.isdigit() or int(p) > 255:
            raise RuleError("not an address: " + text)
        value = value << 8 | int(p)
    return value


def literal(tok):
    """int, float, ("net", network, mask), ("ip", value) or a plain word."""
    if tok.isdigit():
        return int(tok)
    if "/" in tok:
        addr, bits = tok.split("/", 1)
        if not bits.isdigit() or int(bits) > 32:
            raise RuleError("bad prefix: " + tok)
        mask = (0xFFFFFFFF << (32 - int(bits))) & 0xFFFFFFFF
        return ("net", ip_to_int(addr) & mask, mask)
    if tok.count(".") == 3:
        return ("ip", ip_to_int(tok))
    if tok.count(".") == 1 and tok.replace(".", "").isdigit():
        return float(tok)
    return tok


def parse(text):
    """The rule ``text`` as nested tuples; RuleError if it is not in the language."""
    toks = tokenize(text)
    st = {"i": 0, "depth": 0}

    def peek():
        return toks[st["i"]] if st["i"] < len(toks) else None

    def take(want=None):
        tok = peek()
        if tok is None or (want is not None and tok != want):
            raise RuleError("expected " + str(want) + " at token " + str(st["i"]))
        st["i"] += 1
        return tok

    def enter():
        st["depth"] += 1
        if st["depth"] > MAX_DEPTH:
            raise RuleError("rule nested too deeply")

    def stmt():
        enter()
        if peek() == "if":
            take("if")
            c = cond()
            take("then")
            then = actions()
            other = None
            if peek() == "else":
                take("else")
                other = stmt()
            st["depth"] -= 1
            return ("if", c, then, other)
        st["depth"] -= 1
        return actions()

    def actions():
        acts = [action()]
        while peek() == ",":
            take(",")
            acts.append(action())
        return ("do", tuple(acts))

    def action():
        tok = take()
        nxt = peek()
        if tok == "forward":
            if nxt is not None and nxt.count(".") == 3:
                take()
                ip_to_int(nxt)
                return ("forward", nxt)
            return ("forward", None)
        if tok == "drop":
            if nxt is not None and nxt not in (",", "else"):
                return ("drop", take())
            return ("drop", "rule")
        if tok == "meta":
            val = take()
            if not val.isdigit() or int(val) > 255:
                raise RuleError("meta takes 0..255")
            return ("meta", int(val))
        raise RuleError("unknown action " + tok)

    def joined(op, operand):
        # operands joined by ``op``, left-associative: ("or", ("or", a, b), c)
        left = operand()
        while peek() == op:
            take(op)
            left = (op, left, operand())
        return left

    def cond():
        return joined("or", conj)

    def conj():
        return joined("and", neg)

    def neg():
        enter()
        tok = peek()
        if tok == "not":
            take()
            out = ("not", neg())
        elif tok == "(":
            take("(")
            out = cond()
            take(")")
        else:
            attr = take()
            if attr.startswith("congestion@"):
                attr = ("congestion", attr[11:])
                ip_to_int(attr[1])
            elif attr not in ATTRS:
                raise RuleError("unknown attribute " + attr)
            op = take()
            if op not in OPS:
                raise RuleError("unknown operator " + op)
            value = literal(take())
            if op == "in" and not (isinstance(value, tuple) and value[0] == "net"):
                raise RuleError("in takes a prefix")
            out = ("cmp", attr, op, value)
        st["depth"] -= 1
        return out

    tree = stmt()
    if peek() is not None:
        raise RuleError("trailing tokens at " + str(st["i"]))
    return tree


def parsed(text):
    tree = PARSED.get(text)
    if tree is None:
        tree = parse(text)
        if len(PARSED) >= MAX_PARSED:
            PARSED.clear()
        PARSED[text] = tree
    return tree


def compare(have, op, want):
    if isinstance(want, tuple):
        if want[0] == "net":
            return op == "in" and (have & want[2]) == want[1]
        want = want[1]
    if op == "==":
        return have == want
    if op == "!=":
        return have != want
    if isinstance(have, str) or isinstance(want, str):
        return False
    if op == "<":
        return have < want
    if op == "<=":
        return have <= want
    if op == ">":
        return have > want
    if op == ">=":
        return have >= want
    return False


def evaluate(cond, attr):
    kind = cond[0]
    if kind == "cmp":
        return compare(attr(cond[1]), cond[2], cond[3])
    if kind == "and":
        return evaluate(cond[1], attr) and evaluate(cond[2], attr)
    if kind == "or":
        return evaluate(cond[1], attr) or evaluate(cond[2], attr)
    return not evaluate(cond[1], attr)


def run(tree, attr):
    """The actions the rule chooses for a packet whose attributes ``attr(name)`` returns."""
    while tree is not None and tree[0] == "if":
        tree = tree[2] if evaluate(tree[1], attr) else tree[3]
    return () if tree is None else tree[1]


def packet_attrs(pkt, data_len):
    cache = {}

    def attr(name):
        if name in cache:
            return cache[name]
        if isinstance(name, tuple):
            entry = pkt.isp_lookup("congestion", name[1])
            value = 0.0 if entry is None else entry["level"]
        elif name == "src":
            value = ip_to_int(pkt.shim.orig_src if pkt.form == 1 else pkt.src)
        elif name == "proto":
            value = pkt.proto
        elif name == "ttl":
            value = pkt.ttl
        elif name == "len":
            value = data_len
        elif name == "meta":
            value = pkt.shim.metadata if pkt.form else 0
        elif name == "label":
            value = pkt.shim.label if pkt.form == 1 else 0
        elif name == "form":
            value = pkt.form
        else:
            value = pkt.fetch("site") or ""
        cache[name] = value
        return value

    return attr


def carried_rule(payload):
    """(rule text, signature, data length) from an RBF payload; RuleError if malformed."""
    if len(payload) < HEAD.size:
        raise RuleError("short")
    magic, rlen, slen = HEAD.unpack_from(payload, 0)
    end = HEAD.size + rlen + slen
    if magic != MAGIC or end > len(payload) or slen != 64:
        raise RuleError("bad header")
    rule = payload[HEAD.size : HEAD.size + rlen]
    sig = payload[HEAD.size + rlen : end]
    return rule, sig, len(payload) - end


def cert_key(rule, sig):
    return "cert:" + binascii.hexlify(struct.pack("!I", binascii.crc32(rule + sig))).decode()


def process(pkt):
    """Packet API entry point (``pcsite_lite/api.py``)."""
    payload = pkt.read()
    text = None
    data_len = len(payload)
    if payload[:4] == MAGIC:
        try:
            rule, sig, data_len = carried_rule(payload)
        except RuleError:
            return pkt.drop("rbf_malformed")
        cert = pkt.fetch(cert_key(rule, sig))
        if cert is None or cert["sig"] != binascii.hexlify(sig).decode():
            return pkt.drop("rbf_uncertified")
        try:
            text = rule.decode()
        except ValueError:
            return pkt.drop("rbf_uncertified")
        if cert["rule"] != text:
            return pkt.drop("rbf_uncertified")
    elif pkt.form == 1:
        bound = pkt.fetch("rule:" + str(pkt.shim.label))
        if bound is not None:
            text = bound["rule"]
    if text is None:
        return pkt.drop("rbf_no_rule")
    try:
        tree = parsed(text)
    except RuleError:
        return pkt.drop("rbf_bad_rule")
    for act in run(tree, packet_attrs(pkt, data_len)):
        if act[0] == "meta":
            pkt.shim.update(metadata=act[1])
        elif act[0] == "drop":
            return pkt.drop("rbf:" + act[1])
        elif act[1] is not None:
            pkt.forward_to(act[1])
    return None
