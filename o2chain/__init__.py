"""o2chain: monitoring of the high-altitude oxygen chain (produce, supply, use)."""

__version__ = "0.1.0"
