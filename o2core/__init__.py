"""o2chain's pure core: the oxygen formulas and the wire codecs that the gateway (CPython) and
the board firmware (MicroPython, shipped as ``/lib/o2core/*.mpy``) share. See README.md.

Every module here is written in the MicroPython/CPython common subset, imports nothing of the
project and nothing CPython-only, and keeps to the board's heap (no module-level names it does
not need: private constants are ``_NAME = const(...)``).
"""
