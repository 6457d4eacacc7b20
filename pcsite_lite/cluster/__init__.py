"""A site that spans machines (paper §2.3): load balancer, compute nodes, controller.

* :mod:`.maglev` — the consistent-hash lookup table (pure);
* :mod:`.membership` — heartbeats with a TTL, draining, node slots (pure, sans-IO);
* :mod:`.feed` — the controller's state stream to nodes (snapshot + changes);
* :mod:`.lb` — the load balancer role: nft split + policy routing to nodes;
* :mod:`.node` — a compute node's heartbeat sender.

See ``docs/cluster.md``.
"""
