"""Notification delivery over real sockets: local HTTP receivers that fail on purpose (500s,
refused connections, a slow answer, a robot's error code), a real SMTP server with STARTTLS and
login (aiosmtpd), and the durable queue in a real outbox file. The notifier's own threads
deliver, as in the gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from pathlib import Path
from typing import Any

from gateway.alarms import AlarmEvent
from gateway.config import GatewayConfig
from gateway.notify import Notifier, NotifyQueue
from gateway.outbox import Outbox
from gateway.state_store import StateStore
from gateway.tests.conftest import wait_until
from gateway.tests.notify_helpers import (
    DEV,
    Receiver,
    Script,
    SmtpServer,
    base_config,
    event,
    free_port,
    hook,
)

FAST: dict[str, Any] = {"retry_initial_s": 0.2, "retry_max_s": 0.5, "timeout_s": 2.0}


class Stack:
    """Outbox file, alarm store, queue and notifier as the gateway wires them."""

    def __init__(self, tmp_path: Path, config: GatewayConfig):
        self.config = config
        self.outbox = Outbox(tmp_path / "outbox.sqlite")
        self.store = StateStore.sharing(self.outbox.db, self.outbox.lock)
        self.queue = NotifyQueue(
            self.outbox.db,
            self.outbox.lock,
            lambda lines, write: self.outbox.commit([], keep_lines=lines, also=write),
            config.notify,
            gateway_id=config.gateway.id,
        )
        self.store.also_write.append(self.queue.write)
        self.notifier = Notifier(config, self.queue)
        self.notifier.start()

    def commit(self, *events: AlarmEvent) -> None:
        """As the pipeline's committer does: the alarm points and state, then announce."""
        self.outbox.commit([], keep_lines=['alarm state="x" 1'], also=self.store.writer(events))
        for ev in events:
            self.notifier.listener(ev)

    def attempts(self, target: str, result: str) -> int:
        return int(self.notifier.metrics()["attempts"].get((target, result), 0))

    def notify_points(self) -> list[str]:
        lines = self.outbox.peek(10_000)
        return [line for _, line in lines if line.startswith("notify,")]

    def close(self) -> None:
        self.notifier.stop()
        self.outbox.close()


def start(receivers: list[Receiver], script: Script | None = None, port: int = 0) -> Receiver:
    r = Receiver(script, port)
    receivers.append(r)
    return r


def test_webhook_answering_500_gets_it_later_with_one_idempotency_key(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    hook_rx = start(receivers, Script(statuses=[500, 500]))
    stack = Stack(tmp_path, base_config([hook(url=hook_rx.url, **FAST)]))
    try:
        now = stack.notifier.clock_ms()
        stack.commit(event("raise", now))
        reqs = hook_rx.wait_for(lambda rs: any(r.status == 200 for r in rs), 30, "an accepted POST")
        assert [r.status for r in reqs] == [500, 500, 200]
        keys = {r.headers["Idempotency-Key"] for r in reqs}
        assert len(keys) == 1
        body = reqs[-1].json()
        assert body["id"] in keys and body["device"] == DEV and body["event"] == "raise"
        assert body["url"].endswith("/#alarm/lhasa-hotel/room-101/room-o2-high")
        wait_until(lambda: stack.attempts("ops", "ok") == 1, 10, "the success recorded")
        assert stack.attempts("ops", "http_error") == 2
        (row,) = stack.queue.rows()
        assert (row["state"], row["attempts"]) == ("sent", 3)
        # Every attempt is a `notify` point in the outbox, on its way to InfluxDB.
        points = stack.notify_points()
        assert [p.split('result="')[1].split('"')[0] for p in points] == [
            "http_error", "http_error", "ok",
        ]  # fmt: skip
        assert all("target=ops" in p and "device=room-101" in p for p in points)
    finally:
        stack.close()


def test_refused_connection_then_the_target_comes_up(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    url = f"http://127.0.0.1:{port}/hook"
    stack = Stack(tmp_path, base_config([hook(url=url, **FAST)]))
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        wait_until(lambda: stack.attempts("ops", "connect_error") >= 2, 20, "refused attempts")
        rx = start(receivers, port=port)
        reqs = rx.wait_for(lambda rs: len(rs) >= 1, 20, "delivery once listening")
        assert reqs[0].json()["device"] == DEV
        wait_until(lambda: stack.queue.rows()[0]["state"] == "sent", 10, "marked sent")
    finally:
        stack.close()


def test_a_slow_target_times_out_and_never_holds_back_another(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    slow = start(receivers, Script(delay_s=[4.0]))
    quick = start(receivers)
    config = base_config([hook("slow", url=slow.url, **{**FAST, "timeout_s": 1.0}),
                          hook("quick", url=quick.url, **FAST)])  # fmt: skip
    stack = Stack(tmp_path, config)
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        first_quick = quick.wait_for(lambda rs: len(rs) >= 1, 10, "the quick target")[0]
        slow_reqs = slow.wait_for(lambda rs: len(rs) >= 2, 20, "the slow target's retry")
        # The quick target was served while the slow one's first request still hung.
        assert first_quick.at < slow_reqs[0].at + 4.0
        wait_until(lambda: stack.attempts("slow", "ok") == 1, 20, "slow target accepted")
        assert stack.attempts("slow", "timeout") == 1
        assert len({r.headers["Idempotency-Key"] for r in slow.requests}) == 1
    finally:
        stack.close()


def test_wecom_robot_error_code_is_retried(tmp_path: Path, receivers: list[Receiver]) -> None:
    # WeCom answers HTTP 200 with errcode 45009 when a robot sends too fast.
    rx = start(receivers, Script(answers=[{"errcode": 45009, "errmsg": "api freq out of limit"}]))
    stack = Stack(tmp_path, base_config([
        {"id": "wecom", "kind": "wecom", "url": rx.url + "?key=SECRETKEY", **FAST}]))  # fmt: skip
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        reqs = rx.wait_for(lambda rs: len(rs) >= 2, 20, "the retry after errcode 45009")
        wait_until(lambda: stack.attempts("wecom", "ok") == 1, 10, "accepted")
        assert stack.attempts("wecom", "rejected") == 1
        body = reqs[1].json()
        assert body["msgtype"] == "markdown"
        content = body["markdown"]["content"]
        assert (
            "room-101" in content and "房间氧浓度过高" in content and "Room O2 too high" in content
        )
        # The robot key stays out of logs and of what the notifier records.
        assert all("SECRETKEY" not in p for p in stack.notify_points())
    finally:
        stack.close()


def test_dingtalk_signed_request(tmp_path: Path, receivers: list[Receiver]) -> None:
    secret = "SEC0123456789abcdef"
    secret_file = tmp_path / "ding.secret"
    secret_file.write_text(secret + "\n")

    def verify(req: Any) -> int | None:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
        ts = q["timestamp"][0]
        want = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
        return None if base64.b64decode(q["sign"][0]) == want else 403

    rx = start(receivers, Script(check=verify))
    stack = Stack(tmp_path, base_config([{"id": "ding", "kind": "dingtalk",
                                          "url": rx.url + "?access_token=T",
                                          "secret_file": str(secret_file), **FAST}]))  # fmt: skip
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        (req,) = rx.wait_for(lambda rs: len(rs) >= 1, 10, "the robot call")
        wait_until(lambda: stack.attempts("ding", "ok") == 1, 10, "accepted")
        assert req.status == 200 and req.json()["msgtype"] == "markdown"
        assert "Lhasa Hotel" in req.json()["markdown"]["text"]
    finally:
        stack.close()


def test_sms_template_one_request_per_phone(tmp_path: Path, receivers: list[Receiver]) -> None:
    token = tmp_path / "sms.token"
    token.write_text("tok-123\n")
    rx = start(receivers)
    stack = Stack(tmp_path, base_config([{
        "id": "sms", "kind": "sms", "url": rx.url, "to": ["+8613800000001", "+8613800000002"],
        "headers": {"Authorization": "Bearer {token}"}, "token_file": str(token),
        "body_template": '{"phone": "{phone}", "content": "{text}", "ref": "{id}"}', **FAST,
    }]))  # fmt: skip
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        reqs = rx.wait_for(lambda rs: len(rs) >= 2, 10, "two SMS")
        assert sorted(r.json()["phone"] for r in reqs) == ["+8613800000001", "+8613800000002"]
        assert all(r.headers["Authorization"] == "Bearer tok-123" for r in reqs)
        assert all("Room O2 too high" in r.json()["content"] for r in reqs)
        assert reqs[0].json()["ref"] != reqs[1].json()["ref"]  # one key per recipient
    finally:
        stack.close()


def test_email_over_starttls_with_login_is_received(tmp_path: Path) -> None:
    server = SmtpServer(tmp_path, credentials=("gw", "s3cret"))
    pw = tmp_path / "smtp.pw"
    pw.write_text("s3cret\n")
    stack = Stack(tmp_path, base_config([{
        "id": "mail", "kind": "email", "smtp_host": "127.0.0.1", "smtp_port": server.port,
        "from": "gateway@hotel.example", "to": ["ops@hotel.example", "boss@hotel.example"],
        "username": "gw", "password_file": str(pw), "ca_file": str(server.cert), **FAST,
    }]))  # fmt: skip
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        (mail,) = server.wait_for(1, 20)
        assert mail.tls and mail.rcpt_tos == ["ops@hotel.example", "boss@hotel.example"]
        msg = mail.message
        (row,) = stack.queue.rows()
        assert msg["Message-ID"] == f"<{row['idem']}@hotel.example>"
        assert "Lhasa Hotel" in str(msg["Subject"]) and "room-101" in str(msg["Subject"])
        body = msg.get_content()
        assert "Room O2 too high" in body and "房间氧浓度过高" in body and "room-101" in body
        wait_until(lambda: stack.attempts("mail", "ok") == 1, 10, "accepted")
    finally:
        stack.close()
        server.close()


def test_email_never_falls_back_to_plain_text(tmp_path: Path) -> None:
    server = SmtpServer(tmp_path, tls=False)  # offers no STARTTLS
    stack = Stack(tmp_path, base_config([{
        "id": "mail", "kind": "email", "smtp_host": "127.0.0.1", "smtp_port": server.port,
        "from": "gateway@hotel.example", "to": ["ops@hotel.example"], **FAST,
    }]))  # fmt: skip
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        wait_until(lambda: stack.attempts("mail", "rejected") >= 2, 20, "refused attempts")
        assert server.mails == [] and stack.queue.rows()[0]["state"] == "pending"
    finally:
        stack.close()
        server.close()


def test_escalation_due_time_survives_a_restart(tmp_path: Path, receivers: list[Receiver]) -> None:
    """The escalation's due time is in the queue table: a gateway stopped before it is due
    sends it after the restart, at the same time, not a full delay later (nor never)."""
    rx = start(receivers)
    config = base_config([hook("boss", url=rx.url, unacked_after_s=2, **FAST)])
    first = Stack(tmp_path, config)
    raised_at = time.monotonic()
    first.commit(event("raise", first.notifier.clock_ms()))
    first.close()  # stopped well before the escalation is due
    assert rx.requests == []
    second = Stack(tmp_path, config)
    try:
        (req,) = rx.wait_for(lambda rs: len(rs) >= 1, 20, "the escalation after restart")
        assert req.json()["event"] == "escalate"
        assert 2.0 <= req.at - raised_at < 10.0
    finally:
        second.close()


def test_ack_before_the_escalation_is_due_cancels_it(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    now_rx, boss_rx = start(receivers), start(receivers)
    config = base_config([hook("now", url=now_rx.url, **FAST),
                          hook("boss", url=boss_rx.url, unacked_after_s=1, **FAST)])  # fmt: skip
    stack = Stack(tmp_path, config)
    try:
        t0 = stack.notifier.clock_ms()
        stack.commit(event("raise", t0))
        now_rx.wait_for(lambda rs: len(rs) >= 1, 10, "the immediate target")
        stack.commit(event("ack", t0 + 100, raised_ms=t0, by="dolma"))
        wait_until(lambda: stack.notifier.clock_ms() > t0 + 2500, 10, "past the escalation")
        (esc,) = [r for r in stack.queue.rows("boss")]
        assert esc["state"] == "cancelled" and boss_rx.requests == []
    finally:
        stack.close()


def test_a_redirect_is_not_a_delivery(tmp_path: Path, receivers: list[Receiver]) -> None:
    """Following a 302 would turn the POST into a GET without the message, answered 200 by
    whatever page is there: the redirect must count as a failure and be retried."""
    rx = start(receivers, Script(statuses=[302]))
    stack = Stack(tmp_path, base_config([hook(url=rx.url, **FAST)]))
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        wait_until(lambda: stack.attempts("ops", "ok") == 1, 20, "the retry accepted")
        assert [(r.method, r.path, r.status) for r in rx.requests] == [
            ("POST", "/hook", 302), ("POST", "/hook", 200),
        ]  # fmt: skip
        assert stack.attempts("ops", "http_error") == 1
    finally:
        stack.close()


def test_sms_provider_error_in_a_200_answer_is_retried(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    rx = start(receivers, Script(answers=[{"Code": "isv.BUSINESS_LIMIT_CONTROL"},
                                          {"Code": "OK"}]))  # fmt: skip
    stack = Stack(tmp_path, base_config([{
        "id": "sms", "kind": "sms", "url": rx.url, "to": ["+8613800000001"],
        "body_template": '{"phone": "{phone}", "content": "{text}"}',
        "accept_json": {"Code": "OK"}, **FAST,
    }]))  # fmt: skip
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        wait_until(lambda: stack.attempts("sms", "ok") == 1, 20, "the retry accepted")
        assert stack.attempts("sms", "rejected") == 1 and len(rx.requests) == 2
        (row,) = stack.queue.rows()
        assert row["state"] == "sent" and row["attempts"] == 2
    finally:
        stack.close()


def test_a_failing_target_is_reported_to_the_others_once_and_on_recovery(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    port = free_port()  # the WeCom robot's host is unreachable: refused
    other = start(receivers)
    config = base_config([
        {"id": "wecom", "kind": "wecom", "url": f"http://127.0.0.1:{port}/send?key=K",
         "fail_alarm_after_s": 1.0, **FAST},
        hook("mail-gw", url=other.url, **FAST),
    ])  # fmt: skip
    stack = Stack(tmp_path, config)
    try:
        stack.commit(event("raise", stack.notifier.clock_ms()))
        reqs = other.wait_for(lambda rs: len(rs) >= 2, 20, "the alarm and the failure report")
        failing = reqs[1].json()
        assert failing["event"] == "target_failing" and failing["target"] == "wecom"
        assert "notification target wecom failing since" in failing["text"]
        (warning,) = stack.notifier.health_warnings()
        assert warning.startswith("notify: target wecom failing since")
        wait_until(lambda: stack.attempts("wecom", "connect_error") >= 4, 20, "more failures")
        assert len(other.requests) == 2  # told once, not once per failed attempt
        robot = start(receivers, port=port)  # the robot answers again
        robot.wait_for(lambda rs: len(rs) >= 1, 20, "the alarm at the robot")
        reqs = other.wait_for(lambda rs: len(rs) >= 3, 20, "the recovery report")
        assert reqs[2].json()["event"] == "target_recovered"
        assert stack.notifier.health_warnings() == []
    finally:
        stack.close()
