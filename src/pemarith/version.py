"""The version of pemarith (its own module, so that the core can import it without cycles)."""

__version__ = "0.1.0"
