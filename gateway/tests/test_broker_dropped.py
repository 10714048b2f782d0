"""What the broker drops at its queue limits is visible: a real Mosquitto with a small
``max_queued_messages`` drops messages queued for the gateway's session while it is away, and
the gateway shows the broker's own count ($SYS) in /metrics and /api/status."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.metrics import render_prometheus
from gateway.mqtt_ingest import BROKER_DROPPED_TOPIC, MqttIngest
from gateway.outbox import Outbox
from gateway.tests.conftest import wait_until
from o2base.services import Mosquitto
from o2chain import provision

pytestmark = pytest.mark.integration

QUEUE_LIMIT = 10
PUBLISHED = 30


def test_broker_drops_at_its_queue_limit_show_in_metrics_and_status(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", max_queued_messages=QUEUE_LIMIT, sys_interval_s=1) as mq:
        config = parse_config({
            "gateway": {"id": "gw-drop", "state_dir": str(tmp_path / "state"),
                        "http_listen": "127.0.0.1:0"},
            "mqtt": {"url": mq.url},
            "influx": {"url": "http://127.0.0.1:9", "database": "unused"},  # never written
            "site": [{"id": "s", "altitude_m": 3650}],
            "device": [{"id": "room-1", "site": "s", "kind": "room", "transport": "mqtt"}],
        })  # fmt: skip
        gw = Gateway(config)
        # The gateway's session exists (persistent), then the gateway is away.
        first = gw.mqtt
        first.start()
        assert first.subscribed_event.wait(20)
        first.stop()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drop-pub")
        pub.connect(mq.host, mq.port)
        pub.loop_start()
        infos = [
            pub.publish("o2/s/room-1/telemetry", f'{{"v":1,"boot":1,"seq":{n},"o2_pct":21.0}}', 1)
            for n in range(PUBLISHED)
        ]
        for info in infos:
            info.wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        # Back: the broker tells its count; the queued messages it kept come too.
        again = MqttIngest(config, gw.outbox, process=gw.pipeline.process)
        gw.mqtt = gw.sources.mqtt = again
        again.start()
        try:
            dropped = PUBLISHED - QUEUE_LIMIT
            wait_until(lambda: (again.stats.broker_dropped or 0) >= dropped, 20, "the $SYS count")
            wait_until(lambda: again.stats.readings >= QUEUE_LIMIT, 20, "the kept messages")
            assert again.stats.broker_dropped == dropped
            assert again.stats.readings == QUEUE_LIMIT  # what the broker kept, nothing more
            metrics = render_prometheus(gw.observer)
            assert f"o2chain_broker_dropped_messages_total {dropped}" in metrics
            assert gw.observer.status()["gateway"]["broker_dropped"] == dropped
        finally:
            again.stop()
            gw.outbox.close()


def test_a_broker_that_tells_nothing_shows_none_not_zero(tmp_path: Path) -> None:
    config = parse_config({"site": [{"id": "s", "altitude_m": 3650}], "device": []})
    ingest = MqttIngest(config, _outbox(tmp_path))
    assert ingest.stats.broker_dropped is None
    ingest._broker_dropped(b"7")
    ingest._broker_dropped(b"not a number")  # logged, the last count kept
    assert ingest.stats.broker_dropped == 7


def test_the_provisioned_gateway_account_reads_the_topic_the_ingest_subscribes() -> None:
    assert provision.BROKER_DROPPED_TOPIC == BROKER_DROPPED_TOPIC


def _outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite")
