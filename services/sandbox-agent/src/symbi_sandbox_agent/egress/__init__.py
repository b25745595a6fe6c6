"""The network path of a sandbox: the host-side egress proxy its socket leads to (docs/network.md)."""
