"""The line encoder's series prefix looked up by the identity of a reading's tags dict
(gateway/lineproto.py): shared dicts, other measurements on the same dict, and fresh dicts
made and dropped one per reading must all give ``Reading.to_line()``'s line."""

from __future__ import annotations

import gc

from gateway.lineproto import LineEncoder
from gateway.readings import Reading


def test_prefix_by_tags_identity_matches_point() -> None:
    encoder = LineEncoder()
    shared = {"site": "s", "device": "d", "room": "r"}
    for n, measurement in enumerate(["room", "concentrator", "room", "alarm", "room"]):
        r = Reading(measurement, shared, {"o2_pct": 20.5 + n}, 1000 + n)
        assert encoder.encode(r) == r.to_line()
    for n in range(2000):  # fresh dicts, freed at once: their ids come back for other tags
        r = Reading("room", {"site": "s", "device": f"d{n % 7}", "n": str(n)}, {"x": 1.5}, n)
        assert encoder.encode(r) == r.to_line()
        del r
        gc.collect(0)
