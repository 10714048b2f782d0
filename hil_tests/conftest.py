"""Hardware-in-the-loop tier: real Mosquitto, real InfluxDB, real MicroPython, simulated physics.

Service fixtures (``mosquitto``, ``influxdb``, ...) come from ``o2chain.testing`` (root conftest).
"""
