"""prov: isolated, SSH-reachable Docker environments for AI coding agents."""

__version__ = "0.1.0"
