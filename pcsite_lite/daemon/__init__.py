"""The site daemon: TUN dataplane, compute-node worker processes, kernel load balancing.

- :mod:`.config`: the TOML configuration and its validation (:class:`~.config.ConfigError`)
- :mod:`.kernel`: public IP, nftables ``jhash`` bucket split, per-worker policy routing
- :mod:`.worker`: one compute node: TUN in, processing, TUN out
- :mod:`.state`: master site state and the worker replicas (replication ops)
- :mod:`.supervisor`: lifecycle (start/reload/stop), crash detection and rebalancing, control API
"""
