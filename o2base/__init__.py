"""o2chain's foundation: what the gateway, the simulators, the dashboards and the command line
all stand on, and which itself imports none of them.

- ``registers``: equipment profiles (``profiles/*.toml``) and the Modbus register codec;
- ``schema``: the telemetry payload schema (a contract);
- ``errors``: the errors a command reports to its user as one line;
- ``procs``: the one supervisor of child processes (own session, log file, clean stop);
- ``services``: private Mosquitto and InfluxDB instances on loopback, built on ``procs``.

The pure formulas and codecs the boards share live a layer lower, in ``o2core``; the command
line, the demo and the firmware tooling a layer higher, in ``o2chain``.
"""
