"""kvapp: an etcd-compatible replicated key-value server built on raftlib."""
