"""Sensor-wire simulators: CPython processes/threads that speak a sensor's serial protocol on a
pseudo-terminal, so the real firmware (on the ``micropython`` interpreter) talks to them through
its UART stand-in exactly as it would to the module."""
