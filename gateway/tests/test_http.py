"""Status server (stdlib asyncio) with fakes for the delivery side: routes, shapes, actions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.alarm_store import AlarmStore
from gateway.alarms import AlarmEngine
from gateway.config import parse_config
from gateway.enrich import Enricher
from gateway.http import StatusServer, parse_listen
from gateway.observe import Observer, Sources, link_state_from
from gateway.pipeline import Pipeline
from gateway.readings import Reading

T0 = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t_ms = T0

    def __call__(self) -> int:
        return self.t_ms


@dataclass
class FakeOutbox:
    waiting: int = 0
    age_s: float = 0.0

    def depth(self) -> int:
        return self.waiting

    def oldest_age_s(self) -> float:
        return self.age_s

    def dead_letter_counts(self) -> dict[str, int]:
        return {"not_json": 2}


@dataclass
class FakeStats:
    connected: bool = True
    messages: int = 5
    rejects: dict[str, int] = field(default_factory=lambda: {"bad_type": 1})
    duplicates: int = 3
    device_state: dict[str, str] = field(default_factory=dict)
    written: int = 40
    failures: int = 0
    last_latency_s: float = 0.012
    last_error: str = ""


@dataclass
class FakeHealth:
    polls: int = 0
    ok: int = 0
    timeouts: int = 0
    online: bool = False
    last_ok_monotonic: float | None = None


@dataclass
class FakePoller:
    device: Any
    health: FakeHealth = field(default_factory=FakeHealth)


CONFIG = {
    "gateway": {"id": "gw-t", "metrics_interval_s": 60},
    "site": [{"id": "lhasa", "altitude_m": 3650, "name": "Lhasa hotel"}],
    "device": [
        {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt", "room": "101"},
        {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "modbus",
         "url": "tcp://127.0.0.1:1502", "profile": "medical-concentrator", "interval_s": 5},
    ],
    "alarm_engine": {"builtin": False},
    "alarm": [{"id": "o2-high", "field": "o2_pct", "op": ">", "value": 27.0,
               "severity": "alarm"}],
}  # fmt: skip


@dataclass
class Rig:
    clock: Clock
    outbox: FakeOutbox
    mqtt: Any
    poller: FakePoller
    engine: AlarmEngine
    observer: Observer
    pipeline: Pipeline
    ticks: list[int]

    def tick(self) -> None:
        """What the gateway's tick does: the action's event through the pipeline, committed."""
        self.ticks.append(1)
        self.pipeline.process([])


def rig(tmp_path: Path) -> Rig:
    config = parse_config(CONFIG)
    clock = Clock()
    outbox = FakeOutbox()
    mqtt = type("Mqtt", (), {"stats": FakeStats(device_state={"lhasa/room-1": "online"})})()
    poller = FakePoller(config.device[1])
    sources = Sources(outbox=outbox, drainer=mqtt, mqtt=mqtt, pollers=[poller])
    link = link_state_from(sources, clock_s=lambda: clock() / 1000)
    store = AlarmStore(tmp_path / "alarms.sqlite")
    engine = AlarmEngine(config, store, clock_ms=clock, link_state=link)
    enricher = Enricher(config, store, clock_ms=clock)
    observer = Observer(config, sources, engine, enricher, link, clock_ms=clock)
    pipeline = Pipeline([enricher, engine, engine.committed_locally, observer])
    return Rig(clock, outbox, mqtt, poller, engine, observer, pipeline, [])


async def request(url: str, method: str = "GET", body: Any = None) -> tuple[int, str, bytes]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").partition("/")[2]
    data = b"" if body is None else json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    ctype = next(h.split(":", 1)[1].strip() for h in lines if h.lower().startswith("content-type"))
    return int(lines[0].split()[1]), ctype, payload


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8470") == ("::1", 8470)
    for bad in ("8470", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_routes_status_metrics_and_alarm_actions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path)
    tags = {"site": "lhasa", "device": "room-1", "room": "101"}
    r.pipeline.process([Reading("room", tags, {"o2_pct": 28.0, "baro_kpa": 65.0}, T0)])
    r.poller.health = FakeHealth(polls=3, ok=3, online=True, last_ok_monotonic=T0 / 1000)
    modbus_tags = {"site": "lhasa", "device": "conc-1", "source": "modbus"}
    r.pipeline.process([Reading("concentrator", modbus_tags, {"purity_pct": 93.0}, T0)])
    r.clock.t_ms += 2000

    async def scenario() -> None:
        server = StatusServer(
            "127.0.0.1:0",
            r.observer,
            r.engine,
            after_action=r.tick,
        )
        with caplog.at_level("INFO", logger="gateway.http"):
            url = await server.start()
        assert f"HTTP listening on {url}" in caplog.text
        try:
            status, ctype, body = await request(url + "/healthz")
            assert (status, ctype) == (200, "application/json")
            assert json.loads(body)["status"] == "ok"

            status, _, body = await request(url + "/api/status")
            doc = json.loads(body)
            assert status == 200 and doc["gateway"]["id"] == "gw-t"
            (site,) = doc["sites"]
            assert site["id"] == "lhasa" and site["limits"]["o2_high_alarm_pct"] == 27.89
            room, conc = site["devices"]
            assert room["id"] == "room-1" and room["room"] == "101" and room["link"] == "online"
            assert room["values"]["o2_pct"] == {"value": 28.0, "ts_ms": T0, "age_s": 2.0}
            assert room["values"]["eq_alt_m"]["value"] < 1500  # enriched before it is shown
            assert room["alarms"][0]["rule"] == "o2-high"
            assert conc["link"] == "online" and conc["values"]["purity_pct"]["value"] == 93.0
            assert [a["key"] for a in doc["alarms"]] == ["lhasa/room-1/o2-high"]

            status, ctype, body = await request(url + "/metrics")
            text = body.decode()
            assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
            assert 'o2chain_readings_total{source="mqtt"} 1' in text
            assert 'o2chain_readings_total{source="modbus"} 1' in text
            assert 'o2chain_rejects_total{reason="bad_type"} 1' in text
            assert "o2chain_duplicates_total 3" in text
            assert 'o2chain_alarms_active{severity="alarm"} 1' in text
            assert 'o2chain_device_online{site="lhasa",device="room-1",transport="mqtt"} 1' in text
            assert 'o2chain_deadletters{reason="not_json"} 2' in text
            assert "o2chain_influx_write_latency_seconds 0.012" in text

            base = url + "/api/alarms/lhasa/room-1/o2-high"
            status, _, body = await request(base + "/ack", "POST", {"by": "dolma"})
            assert status == 200 and json.loads(body)["alarm"]["state"] == "acknowledged"
            assert r.ticks == [1]  # the ack event is flushed to the outbox at once
            status, _, body = await request(base + "/ack", "POST", {"by": "dolma"})
            assert status == 409 and "already acknowledged" in json.loads(body)["error"]
            status, _, body = await request(base + "/shelve", "POST", {"duration_s": "long"})
            assert status == 400
            status, _, body = await request(base + "/shelve", "POST", {"duration_s": 3600})
            assert status == 200 and json.loads(body)["alarm"]["shelved"] is True
            status, _, body = await request(url + "/api/alarms")
            assert [a["key"] for a in json.loads(body)["shelved"]] == ["lhasa/room-1/o2-high"]
            status, _, body = await request(base + "/unshelve", "POST", {})
            assert status == 200 and json.loads(body)["alarm"]["shelved"] is False
            status, _, body = await request(url + "/api/alarms/log?limit=2")
            assert [e["event"] for e in json.loads(body)["events"]] == ["unshelve", "shelve"]
            status, _, _ = await request(url + "/api/alarms/log?limit=x")
            assert status == 400
            status, _, body = await request(url + "/api/rules")
            assert [x["id"] for x in json.loads(body)["rules"]] == ["o2-high"]
            # Errors: unknown alarm, route, method, bad JSON.
            status, _, _ = await request(url + "/api/alarms/lhasa/room-9/o2-high/ack", "POST")
            assert status == 404
            assert (await request(url + "/nope"))[0] == 404
            assert (await request(url + "/api/status", "POST"))[0] == 405
            assert (await request(base + "/ack", "GET"))[0] == 405
            status, _, _ = await request(base + "/frobnicate", "POST", {})
            assert status == 404
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_healthz_fails_on_a_stuck_outbox_or_pipeline(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.outbox.age_s = 301.0  # default limit 300 s
    health = r.observer.health()
    assert not health["ok"] and "outbox: oldest point waits 301 s" in health["reasons"][0]
    r.outbox.age_s = 0.0
    r.clock.t_ms += 11_000  # no pipeline pass (the tick runs every second)
    assert "pipeline: no pass for 11 s" in r.observer.health()["reasons"]
    r.pipeline.process([])
    assert r.observer.health()["ok"]
    r.mqtt.stats.connected = False
    assert r.observer.health() == {
        "ok": True,
        "reasons": [],
        "warnings": ["mqtt: not connected to the broker"],
    }


def test_gateway_self_metric_points_and_modbus_link(tmp_path: Path) -> None:
    r = rig(tmp_path)
    tags = {"site": "lhasa", "device": "room-1", "room": "101"}
    for _ in range(30):
        r.pipeline.process([Reading("room", tags, {"o2_pct": 25.0}, r.clock())])
        r.clock.t_ms += 2000
    points = [p for p in r.pipeline.process([]) if p.measurement == "gateway"]
    assert len(points) == 1
    (point,) = points
    assert point.tags == {"gw": "gw-t"}
    assert point.fields["rate_mqtt_per_s"] == pytest.approx(0.5)
    assert point.fields["readings_mqtt"] == 30 and point.fields["duplicates"] == 3
    assert point.fields["devices_online"] == 1  # room-1; conc-1 never polled: unknown
    # A Modbus device that stops answering: offline after two intervals, and alarmed.
    r.poller.health = FakeHealth(polls=9, ok=8, online=False, last_ok_monotonic=r.clock() / 1000)
    r.clock.t_ms += 9000
    assert r.observer.link_state("lhasa", "conc-1") is True  # one lost poll is not offline
    r.clock.t_ms += 2000
    assert r.observer.link_state("lhasa", "conc-1") is False
