"""Tools for the host: evaluation on photo sets and LFW, the demo and a local broker (never in a device bundle)."""
