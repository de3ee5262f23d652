"""Per-peer replication progress and the configuration that decides quorums. Internal."""
