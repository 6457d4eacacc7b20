"""Inter-domain multicast service (Free Riding Multicast over PacketCloud, paper §2.6.2).

This file is what the PSP uploads to the service repository: it runs in the site's sandbox,
so it imports only ``struct`` and uses only the Packet API. Everything it knows comes from the
site's FIS (key ``"table"``, written by ``control.py``; layout in ``bgp.py``)::

    version, as, neighbours {AS: site address}, routes {AS: {path, groups}},
    local {group: [receiver addresses]}, links {"u>v": [link ID per seed, hex]}

Sender's first site (shim metadata bit 0 clear): compute the group's tree as the union of the
AS paths to the member domains, choose the link-ID table (seed) whose zFilter reaches exactly
the tree on the known links, cache (seed, zFilter) under (group, table version) in the
node-local cache, prepend the 44-byte multicast header. Every site: send a copy to each
neighbour whose out-link ID matches the zFilter, except the upstream one; deliver the bare
payload to this domain's receivers of the group.
"""

import struct

HEADER = struct.Struct("!2sBBII32s")
HEADER_LEN = 44
MAGIC = b"MC"
MD_TREE = 1
N_SEEDS = 8


def tree_edges(here, routes, members):
    """Union of the AS paths from ``here`` to ``members``, one parent per AS (a tree)."""
    children = {}
    for dest in members:
        if dest == here:
            continue
        entry = routes.get(str(dest))
        if entry is None:
            continue
        path = [int(a) for a in entry["path"]]
        if not path or path[-1] != dest or here in path or len(set(path)) != len(path):
            continue
        prev = here
        for hop in path:
            children.setdefault(prev, set()).add(hop)
            prev = hop
    edges = []
    seen = {here}
    queue = [here]
    while queue:
        u = queue.pop(0)
        for v in sorted(children.get(u, ())):
            if v not in seen:
                seen.add(v)
                edges.append((u, v))
                queue.append(v)
    return edges


def link_id(links, u, v, seed):
    ids = links.get(str(u) + ">" + str(v))
    if ids is None:
        return None
    return int(ids[seed], 16)


def matching(links, here, neighbours, zf, seed, upstream):
    """Neighbours whose out-link ID is in the zFilter, never the upstream one."""
    out = []
    for v in sorted(neighbours):
        if v == upstream:
            continue
        lid = link_id(links, here, v, seed)
        if lid is not None and zf & lid == lid:
            out.append(v)
    return out


def encode(here, table, group):
    """(seed, zFilter as int) for ``group``'s tree, the seed with fewest stray copies."""
    routes = table["routes"]
    links = table["links"]
    members = set()
    for dest, entry in routes.items():
        if group in entry["groups"]:
            members.add(int(dest))
    edges = tree_edges(here, routes, members)
    nodes = {here} | {v for u, v in edges}
    adj = {}
    for name in links:
        u, v = name.split(">")
        adj.setdefault(int(u), []).append(int(v))
    best = None
    for seed in range(N_SEEDS):
        zf = 0
        for u, v in edges:
            lid = link_id(links, u, v, seed)
            if lid is None:
                return None
            zf |= lid
        copies = {here: 1}
        queue = [(here, None)]
        sent = 0
        while queue and sent < 1000:
            u, up = queue.pop(0)
            for v in matching(links, u, adj.get(u, ()), zf, seed, up):
                sent += 1
                if v in copies:
                    copies[v] += 1
                else:
                    copies[v] = 1
                    queue.append((v, u))
        extra = sum(copies.values()) - len(nodes)
        if extra == 0:
            return (seed, zf)
        if best is None or extra < best[0]:
            best = (extra, seed, zf)
    return (best[1], best[2])


def plan(payload, group, has_header, table, cache_get, cache_put, src=None):
    """The copies of one packet at this site.

    Returns ``{"sites": [(address, payload)], "hosts": [(address, payload)], "drop": reason
    or None, "computed": bool, "payload": header + data}``; node-local cache values are bytes
    (seed byte + 32-byte zFilter) under ``"mc-tree:<group>:<table version>"``. With ``src``
    (the packet's IP source), a packet carrying a header must come from the site of the
    upstream AS it names.
    """
    result = {"sites": [], "hosts": [], "drop": None, "computed": False, "payload": b""}
    if table is None:
        result["drop"] = "mc_no_table"
        return result
    here = int(table["as"])
    upstream = None
    if has_header:
        if len(payload) < HEADER_LEN:
            result["drop"] = "mc_truncated"
            return result
        magic, version, seed, group, upstream, zbytes = HEADER.unpack_from(payload)
        if magic != MAGIC or version != 1 or seed >= N_SEEDS:
            result["drop"] = "mc_bad_header"
            return result
        if src is not None and table["neighbours"].get(str(upstream)) != src:
            # only a neighbour site may send a packet that already carries a tree: a sender
            # cannot inject its own zFilter (e.g. all ones, to flood every link)
            result["drop"] = "mc_forged_header"
            return result
        zf = int.from_bytes(zbytes, "big")
        data = bytes(payload[HEADER_LEN:])
    else:
        key = "mc-tree:" + str(group) + ":" + str(table["version"])
        cached = cache_get(key)
        if cached is None:
            cached = encode(here, table, group)
            if cached is None:
                result["drop"] = "mc_no_link_id"
                return result
            cached = bytes([cached[0]]) + cached[1].to_bytes(32, "big")
            cache_put(key, cached)
            result["computed"] = True
        seed = cached[0]
        zbytes = bytes(cached[1:33])
        zf = int.from_bytes(zbytes, "big")
        data = bytes(payload)
    neighbours = {int(n): addr for n, addr in table["neighbours"].items()}
    fwd = HEADER.pack(MAGIC, 1, seed, group, here, zbytes) + data
    for v in matching(table["links"], here, neighbours, zf, seed, upstream):
        result["sites"].append((neighbours[v], fwd))
    for host in table.get("local", {}).get(str(group), ()):
        result["hosts"].append((host, data))
    result["payload"] = fwd
    return result


def process(pkt):
    """Packet API entry point (paper Table 1; ``pcsite_lite/api.py``)."""
    shim = pkt.shim.read()
    if shim.form != 1:
        pkt.drop("mc_not_a_circuit_packet")
        return
    table = pkt.fetch("table")
    has_header = shim.metadata & MD_TREE == MD_TREE
    group = 0
    if not has_header:
        # the sender's first site: the circuit label names the group (control.py writes it)
        group = pkt.fetch("group:" + str(shim.label))
        if group is None:
            pkt.drop("mc_unknown_group")
            return
    result = plan(pkt.read(0, None), group, has_header, table, pkt.cache_get, pkt.cache, pkt.src)
    if result["drop"] is not None:
        pkt.drop(result["drop"])
        return
    if result["computed"]:
        pkt.log("mc tree computed group=" + str(group) + " version=" + str(table["version"]))
    targets = [site for site, data in result["sites"]] + [h for h, data in result["hosts"]]
    if not targets:
        pkt.drop("mc_leaf")
        return
    # one payload for every copy (the API replicates the packet as it is): the header with
    # this AS as upstream; receivers skip the 44-byte header (control.receive_payload)
    pkt.set_payload(result["payload"])
    pkt.shim.update(metadata=shim.metadata | MD_TREE)
    pkt.replicate(targets)
