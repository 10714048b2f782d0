"""o2chain board firmware (MicroPython, ESP32): application package.

Every module here runs unchanged on the board (as mpy-cross bytecode) and, for the pure ones,
under CPython in the tests: keep to the MicroPython/CPython common subset.
"""

FW_VERSION = "0.1.0"
