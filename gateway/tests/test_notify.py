"""Notifications, unit level: configuration, queue rules (what is queued, when, for whom, what
cancels it), the workers' retry / rate limit / failing-target logic on a fake clock, and the
messages. Delivery over real HTTP and SMTP is in test_notify_delivery.py, the gateway process
in test_notify_gateway.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
import threading
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.alarms import AlarmEvent
from gateway.config import ConfigError, GatewayConfig, NotifyTarget
from gateway.notify.messages import Message, compose
from gateway.notify.queue import NotifyQueue, quiet_until_ms
from gateway.notify.targets import HttpSender, Outcome, dingtalk_signed_url, redact
from gateway.notify.worker import Notifier
from gateway.outbox import Outbox
from gateway.state_store import StateStore
from gateway.tests.notify_helpers import DEV, RULE, SITE, base_config, event, hook

SHANGHAI = ZoneInfo("Asia/Shanghai")


def shanghai_ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=SHANGHAI).timestamp() * 1000)


class Clock:
    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class Harness:
    """A queue in an in-memory database, with the alarm store writing into it as the gateway's
    outbox transaction does; ``points`` collects the ``notify`` lines committed."""

    def __init__(self, config: GatewayConfig, now_ms: int):
        self.config = config
        self.clock = Clock(now_ms)
        self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        self.points: list[str] = []
        self.store = StateStore.sharing(self.db, self.lock)
        self.queue = NotifyQueue(self.db, self.lock, self._commit, config.notify, "gw-test",
                                 clock_ms=self.clock)  # fmt: skip
        self.store.also_write.append(self.queue.write)

    def _commit(self, lines: list[str], write: Any) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            write(self.db)
            self.db.execute("COMMIT")
        self.points += lines

    def commit(self, *events: AlarmEvent) -> None:
        self.store.write(list(events))

    def pending(self, target: str | None = None) -> list[tuple[str, str, int]]:
        return [(r["target"], r["kind"], r["due_ms"]) for r in self.queue.rows(target)
                if r["state"] == "pending"]  # fmt: skip


# --------------------------------------------------------------------------- configuration
def test_config_accepts_every_kind(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("SECabc\n")
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    wecom_url = tmp_path / "wecom.url"
    wecom_url.write_text("https://qyapi.example/cgi-bin/webhook/send?key=SECabc\n")
    cfg = base_config([
        hook("hook", min_severity="warning", device="room-*", site=SITE, events=["raise"]),
        {"id": "wecom", "kind": "wecom", "url_file": str(wecom_url)},
        {"id": "ding", "kind": "dingtalk", "url": "https://oapi.example/robot/send?a=1",
         "secret_file": str(secret), "quiet_hours": "22:00-07:00", "timezone": "Asia/Urumqi"},
        {"id": "mail", "kind": "email", "smtp_host": "127.0.0.1", "from": "gw@example.org",
         "to": ["ops@example.org"], "username": "gw", "password_file": str(pw)},
        {"id": "sms", "kind": "sms", "url": "https://sms.example/send", "to": ["+8613800000000"],
         "body_template": '{"to": "{phone}", "msg": "{text}"}', "headers": {"X-Key": "{token}"},
         "token_file": str(pw)},
    ])  # fmt: skip
    assert [t.kind.value for t in cfg.notify] == ["webhook", "wecom", "dingtalk", "email", "sms"]
    assert cfg.notify[3].from_ == "gw@example.org"
    url = cfg.notify[1].read_url()
    assert url.get_secret_value().endswith("?key=SECabc") and "SECabc" not in repr(url)
    assert cfg.gateway.live_page_url() == "http://127.0.0.1:8470"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"id": "w", "kind": "wecom"},
         "notify[0]: kind 'wecom' needs exactly one of url or url_file"),
        ({"id": "m", "kind": "email", "smtp_host": "h", "from": "a@b.c"},
         "notify[0]: kind 'email' needs smtp_host, from and to"),
        ({"id": "m", "kind": "email", "smtp_host": "h", "from": "a@b.c", "to": ["nobody"]},
         "to[0]: 'nobody' is not an e-mail address"),
        ({"id": "s", "kind": "sms", "url": "http://x/", "to": ["12ab"], "body_template": "{text}"},
         "to[0]: '12ab' is not a phone number"),
        (hook(quiet_hours="22-07"), "notify[0].quiet_hours: String should match pattern"),
        (hook(timezone="Mars/Olympus"), "notify[0].timezone: unknown time zone 'Mars/Olympus'"),
        (hook(secret_file="/etc/hostname"), "secret_file is for kind 'dingtalk'"),
        (hook(url="ftp://x/"), "notify[0].url: expected http://host[:port]/path"),
        (hook(min_severity="fatal"), "notify[0].min_severity: Input should be"),
        (hook(site="nowhere"), "notify[0] (ops).site: 'nowhere' is not a [[site]]"),
        (hook(events=["raise", "explode"]), "notify[0].events[1]"),
        (hook(repeat_s=2), "repeat_s: expected 0 (never) or at least 10 s"),
        ({"id": "w", "kind": "wecom", "url": "http://x/", "accept_json": {"ok": True}},
         "accept_json is for kinds 'webhook' and 'sms'"),
        ({"id": "w", "kind": "wecom", "url_file": "/nonexistent/key"},
         "url_file: cannot read /nonexistent/key"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(target: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        base_config([target])
    assert expected in str(err.value)


def test_config_duplicate_target_ids() -> None:
    with pytest.raises(ConfigError, match=r"notify\[1\]\.id: duplicate target id 'ops'"):
        base_config([hook(), hook()])


def test_public_url_is_checked_and_used() -> None:
    with pytest.raises(ConfigError, match=r"gateway\.public_url: expected http"):
        base_config([], public_url="hotel.example")
    cfg = base_config([], public_url="https://o2.hotel.example/")
    assert cfg.gateway.live_page_url() == "https://o2.hotel.example"


# --------------------------------------------------------------------------- quiet hours
def test_quiet_hours_span_midnight_in_the_targets_time_zone() -> None:
    t = NotifyTarget.model_validate(hook(quiet_hours="22:00-07:00"))
    assert quiet_until_ms(t, shanghai_ms(2026, 12, 3, 23, 30)) == shanghai_ms(2026, 12, 4, 7)
    assert quiet_until_ms(t, shanghai_ms(2026, 12, 4, 3)) == shanghai_ms(2026, 12, 4, 7)
    assert quiet_until_ms(t, shanghai_ms(2026, 12, 4, 7)) is None
    assert quiet_until_ms(t, shanghai_ms(2026, 12, 4, 21, 59)) is None
    day = NotifyTarget.model_validate(hook(quiet_hours="12:00-14:00"))
    assert quiet_until_ms(day, shanghai_ms(2026, 12, 4, 13)) == shanghai_ms(2026, 12, 4, 14)
    assert quiet_until_ms(day, shanghai_ms(2026, 12, 4, 15)) is None


def test_quiet_hours_hold_warnings_but_never_critical_alarms() -> None:
    night = shanghai_ms(2026, 12, 3, 23)
    h = Harness(base_config([hook(min_severity="warning", quiet_hours="22:00-07:00")]), night)
    h.commit(event("raise", night, severity="critical"))
    h.commit(event("raise", night, severity="warning", rule="co2-warn"))
    due = {r["alarm_key"].rsplit("/", 1)[1]: r["due_ms"] for r in h.queue.rows()}
    assert due == {RULE: night, "co2-warn": shanghai_ms(2026, 12, 4, 7)}


# --------------------------------------------------------------------------- queue rules
def test_raise_is_queued_for_the_matching_targets_only() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([
        hook("all", min_severity="warning"),
        hook("crit", min_severity="critical"),
        hook("rooms", device="room-*"),
        hook("concs", device="conc-*"),
        hook("nagqu", site="nagqu"),
        hook("off", enabled=False),
        hook("clears-only", events=["clear"]),
    ]), now)  # fmt: skip
    h.commit(event("raise", now, severity="alarm", rule="co2-high"))
    assert sorted(t for t, _, _ in h.pending()) == ["all", "rooms"]
    h.commit(event("raise", now + 1, severity="critical"))
    assert sorted(t for t, _, _ in h.pending()) == ["all", "all", "crit", "rooms", "rooms"]
    # A shelved alarm is hidden from annunciation: nothing to send.
    h.commit(event("raise", now + 2, severity="critical", device="conc-1", shelved=True))
    assert not h.pending("concs")


def test_the_same_event_is_queued_once() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook()]), now)
    ev = event("raise", now)
    h.commit(ev)
    h.commit(ev)  # the same occurrence again (a replayed commit): same key, one row
    rows = h.queue.rows()
    assert len(rows) == 1 and rows[0]["idem"].startswith("o2n-")


def test_notifications_commit_in_the_alarm_events_transaction(tmp_path: Path) -> None:
    """An alarm event whose commit fails leaves no queued notification, and one that commits
    has its notification with it: same transaction (outbox.sqlite)."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    cfg = base_config([hook()])
    store = StateStore.sharing(outbox.db, outbox.lock)
    queue = NotifyQueue(outbox.db, outbox.lock, lambda lines, w: outbox.commit([], also=w),
                        cfg.notify)  # fmt: skip
    store.also_write.append(queue.write)
    ev = event("raise", 1_000)

    def failing(db: sqlite3.Connection) -> None:
        store.writer([ev])(db)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        outbox.commit(["room o2_pct=29.5 1000"], keep_lines=["alarm state=\"raise\" 1000"],
                      also=failing)  # fmt: skip
    assert queue.rows() == [] and store.load_states() == {}
    outbox.commit([], keep_lines=['alarm state="raise" 1000'], also=store.writer([ev]))
    assert [r["kind"] for r in queue.rows()] == ["raise"]
    outbox.close()


def test_escalation_is_due_after_the_delay_and_cancelled_by_ack() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("boss", unacked_after_s=60)]), now)
    h.commit(event("raise", now))
    assert h.pending() == [("boss", "escalate", now + 60_000)]
    assert h.queue.due("boss", now + 59_999, 10) == []
    assert [i.kind for i in h.queue.due("boss", now + 60_000, 10)] == ["escalate"]
    h.clock.ms = now + 30_000
    h.commit(event("ack", now + 30_000, raised_ms=now, by="dolma"))
    assert h.pending() == []
    assert {r["state"] for r in h.queue.rows()} == {"cancelled"}


def test_clear_before_escalation_cancels_it_and_tells_nobody() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("boss", unacked_after_s=60)]), now)
    h.commit(event("raise", now))
    h.commit(event("clear", now + 10_000, raised_ms=now))
    assert h.pending() == []


def test_repeats_while_unacknowledged_and_stop_at_ack() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook(repeat_s=600)]), now)
    h.commit(event("raise", now))
    assert sorted(k for _, k, _ in h.pending()) == ["raise", "repeat"]
    first, repeat1 = sorted(h.queue.due("ops", now + 600_000, 10), key=lambda i: i.seq)
    h.queue.mark_sent(first, 1, [])
    h.clock.ms = now + 600_000
    h.queue.mark_sent(repeat1, 1, [])
    assert h.pending() == [("ops", "repeat", now + 1_200_000)]  # the next one, seq 2
    h.clock.ms = now + 700_000
    h.commit(event("ack", now + 700_000, raised_ms=now, by="dolma"))
    assert h.pending() == []
    # A repeat in flight when the ack committed does not start a new one.
    (seq2,) = [r for r in h.queue.rows() if r["seq"] == 2]
    assert seq2["state"] == "cancelled"


def test_clear_goes_to_the_targets_told_of_the_raise() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("told"), hook("retrying"), hook("untried"),
                             hook("late", unacked_after_s=3600)]), now)  # fmt: skip
    h.commit(event("raise", now))
    by_target = {i.target: i for t in ("told", "retrying", "untried")
                 for i in h.queue.due(t, now, 10)}  # fmt: skip
    h.queue.mark_sent(by_target["told"], 1, [])
    h.queue.mark_failed(by_target["retrying"], 1, "HTTP 500", now + 2000, [])
    h.commit(event("clear", now + 90_000, raised_ms=now))
    pending = sorted((t, k) for t, k, _ in h.pending())
    # "untried" never heard of it (e.g. held behind its rate limit): its raise is dropped too;
    # "retrying" still gets the raise, then the clear.
    assert pending == [("retrying", "clear"), ("retrying", "raise"), ("told", "clear")]


def test_ack_notifies_only_when_the_target_asks_for_it() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("plain"), hook("acks", events=["raise", "clear", "ack"])]), now)
    h.commit(event("raise", now))
    for t in ("plain", "acks"):
        (item,) = h.queue.due(t, now, 10)
        h.queue.mark_sent(item, 1, [])
    h.commit(event("ack", now + 5000, raised_ms=now, by="dolma"))
    assert [(t, k) for t, k, _ in h.pending()] == [("acks", "ack")]


# --------------------------------------------------------------------------- workers
class FakeSender:
    """Answers from a script of outcomes (then ok); records what it was asked to send."""

    def __init__(self, script: list[str] | None = None):
        self.script = list(script or [])
        self.sent: list[tuple[Message, str, str]] = []

    def send(self, message: Message, recipient: str, idem: str) -> Outcome:
        self.sent.append((message, recipient, idem))
        result = self.script.pop(0) if self.script else "ok"
        return Outcome(result, "" if result == "ok" else f"scripted {result}")


def notifier(h: Harness, senders: dict[str, FakeSender]) -> Notifier:
    return Notifier(h.config, h.queue, senders=dict(senders), clock_ms=h.clock)


def test_worker_retries_with_exponential_backoff_until_accepted() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook(retry_initial_s=2, retry_max_s=5)]), now)
    sender = FakeSender(["http_error", "connect_error", "timeout", "rejected"])
    n = notifier(h, {"ops": sender})
    w = n.workers["ops"]
    h.commit(event("raise", now))
    waits = []
    for _ in range(5):
        waits.append(round(w.step(), 3))
        h.clock.ms = h.queue.next_due_ms("ops") or h.clock.ms
    # After each failure the next attempt is due 2, 4, 5 (capped), 5 s later; then accepted.
    dues = [r["due_ms"] for r in h.queue.rows()]
    assert len(sender.sent) == 5 and h.pending() == [] and dues
    assert len({idem for _, _, idem in sender.sent}) == 1  # one key for all attempts
    assert h.clock.ms - now == (2 + 4 + 5 + 5) * 1000
    assert n.metrics()["attempts"] == {
        ("ops", "http_error"): 1, ("ops", "connect_error"): 1, ("ops", "timeout"): 1,
        ("ops", "rejected"): 1, ("ops", "ok"): 1,
    }  # fmt: skip
    results = [line.split('result="')[1].split('"')[0] for line in h.points]
    assert results == ["http_error", "connect_error", "timeout", "rejected", "ok"]
    assert all(line.startswith("notify,") and "device=room-101" in line for line in h.points)


def test_rate_limit_queues_the_excess_critical_first() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook(min_severity="warning", rate_limit_per_min=2)]), now)
    sender = FakeSender()
    w = notifier(h, {"ops": sender}).workers["ops"]
    for i, sev in enumerate(["warning", "warning", "critical", "alarm"]):
        h.commit(event("raise", now, severity=sev, device=f"room-{i}", rule=f"r-{sev}"))
    assert w.step() == 0.0 and w.step() == 0.0
    wait_s = w.step()  # the third must wait for the minute: queued, not dropped
    assert 59 < wait_s <= 60 and len(h.pending()) == 2
    assert [m.data["severity"] for m, _, _ in sender.sent] == ["critical", "alarm"]


def test_failing_target_alerts_the_others_once_and_once_more_on_recovery() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("down", fail_alarm_after_s=60, retry_max_s=10),
                             hook("mail")]), now)  # fmt: skip
    down = FakeSender(["connect_error"] * 20)
    mail = FakeSender()
    n = notifier(h, {"down": down, "mail": mail})
    h.commit(event("raise", now))
    n.workers["mail"].step()  # the alarm itself
    for _ in range(12):  # 2 + 4 + 8 + 10 + 10 ... s: past 60 s of failing
        n.workers["down"].step()
        h.clock.ms = h.queue.next_due_ms("down") or h.clock.ms
    assert h.clock.ms - now > 60_000
    while n.workers["mail"].step() == 0.0:
        pass
    kinds = [m.data["event"] for m, _, _ in mail.sent]
    assert kinds == ["raise", "target_failing"]
    assert "notification target down failing since" in mail.sent[1][0].text
    assert "通知通道 down" in mail.sent[1][0].text
    (warning,) = n.health_warnings()
    assert warning.startswith("notify: target down failing since")
    assert n.metrics()["failing"] == {"down": 1, "mail": 0}
    # A restarted notifier knows the failure and that the others were told: no second alert.
    n2 = notifier(h, {"down": FakeSender(["connect_error"] * 5), "mail": mail})
    assert n2.workers["down"].status.alerted
    down.script = []  # the target comes back
    h.clock.ms = h.queue.next_due_ms("down") or h.clock.ms
    n.workers["down"].step()
    while n.workers["mail"].step() == 0.0:
        pass
    assert [m.data["event"] for m, _, _ in mail.sent] == ["raise", "target_failing",
                                                        "target_recovered"]  # fmt: skip
    assert n.health_warnings() == [] and n.metrics()["depth"]["down"] == 0


def test_escalation_is_not_sent_after_ack_committed_meanwhile() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("boss", unacked_after_s=60)]), now)
    sender = FakeSender()
    w = notifier(h, {"boss": sender}).workers["boss"]
    h.commit(event("raise", now))
    (item,) = h.queue.due("boss", now + 60_000, 1)
    h.clock.ms = now + 60_000
    h.commit(event("ack", now + 59_000, raised_ms=now, by="dolma"))
    assert w.deliver(item) is None and sender.sent == []


# --------------------------------------------------------------------------- messages
def test_message_says_where_what_how_bad_and_what_to_do_in_both_languages() -> None:
    cfg = base_config([hook(unacked_after_s=120)], public_url="https://o2.hotel.example")
    ev = event("raise", shanghai_ms(2026, 12, 3, 3, 4))
    msg = compose("raise", {"event": "raise", "ts_ms": ev.ts_ms, "alarm": ev.alarm},
                  cfg, cfg.notify[0], "o2n-x")  # fmt: skip
    for words in (
        "Lhasa Hotel (lhasa-hotel)", "room 101 (room-101)", "房间 101",
        "[CRITICAL] Room O2 too high (fire hazard)", "【严重】房间氧浓度过高",
        "Now O2 29.5 %, limit 27.9 %", "当前值 氧浓度 29.5 %,报警限 27.9 %",
        "no open flames", "禁止明火", "2026-12-03 03:04:00 CST",
        "https://o2.hotel.example/#alarm/lhasa-hotel/room-101/room-o2-high",
        "operator login required", "需操作员登录", "ref o2n-x",
    ):  # fmt: skip
        assert words in msg.text, words
    assert msg.data["id"] == "o2n-x" and msg.data["device"] == DEV and msg.data["room"] == "101"
    assert "Lhasa Hotel" in msg.subject and "101" in msg.subject
    esc = compose("escalate", {"ts_ms": ev.ts_ms, "alarm": ev.alarm}, cfg, cfg.notify[0], "k")
    assert "unacknowledged for 2 min" in esc.text and "已 2 分钟未确认" in esc.text
    clear = compose("clear", {"ts_ms": ev.ts_ms, "alarm": ev.alarm}, cfg, cfg.notify[0], "k")
    assert "[CLEARED]" in clear.text and "nothing to do" in clear.text
    deficient = {**ev.alarm, "rule": "room-o2-deficient", "value": 18.9, "threshold": 19.5}
    d = compose("raise", {"ts_ms": ev.ts_ms, "alarm": deficient}, cfg, cfg.notify[0], "k")
    assert "leave the room" in d.text and "撤离" in d.text and "check the supply" in d.text
    purity = {**ev.alarm, "rule": "purity-low", "device": "conc-1", "field": "purity_pct",
              "value": 80.2, "threshold": 82.0}  # fmt: skip
    p = compose("raise", {"ts_ms": ev.ts_ms, "alarm": purity}, cfg, cfg.notify[0], "k")
    assert "backup supply" in p.text and "备用气源" in p.text and "unit conc-1" in p.text


# --------------------------------------------------------------------------- wire formats
def test_dingtalk_signature_follows_the_robot_scheme() -> None:
    url = dingtalk_signed_url("https://oapi.example/robot/send?access_token=T", "SECxyz", 1700)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["timestamp"] == ["1700"] and query["access_token"] == ["T"]
    expected = hmac.new(b"SECxyz", b"1700\nSECxyz", hashlib.sha256).digest()
    assert base64.b64decode(query["sign"][0]) == expected


def test_robot_urls_are_redacted_and_wecom_markdown_is_bounded() -> None:
    assert redact("https://qyapi.example/cgi-bin/webhook/send?key=SECRET") == (
        "https://qyapi.example/cgi-bin/webhook/send"
    )
    t = NotifyTarget.model_validate(
        {"id": "w", "kind": "wecom", "url": "http://127.0.0.1:9/?key=k"}
    )
    msg = Message("s", "t", "长" * 3000, "short", {})
    req = HttpSender(t).request(msg, "", "id")
    import json

    assert isinstance(req.data, bytes)
    body = json.loads(req.data)
    assert body["msgtype"] == "markdown" and len(body["markdown"]["content"].encode()) <= 4096


def test_healthz_warns_and_metrics_show_the_queue() -> None:
    from gateway.observe import Observer
    from gateway.sources import Sources

    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("down", fail_alarm_after_s=30)]), now)
    n = notifier(h, {"down": FakeSender(["http_error"] * 10)})
    observer = Observer(h.config, Sources(notifier=n), clock_ms=h.clock)
    h.commit(event("raise", now))
    for _ in range(4):  # 2 + 4 + 8 + 16 s of failing: past 30 s
        n.workers["down"].step()
        h.clock.ms = h.queue.next_due_ms("down") or h.clock.ms
    (warning,) = observer.health()["warnings"]
    assert "notify: target down failing since" in warning and "scripted http_error" in warning
    text = observer.prometheus()
    assert 'o2chain_notify_attempts_total{target="down",result="http_error"} 4' in text
    assert 'o2chain_notify_queue_depth{target="down"} 1' in text
    assert 'o2chain_notify_oldest_age_seconds{target="down"} 30' in text
    assert 'o2chain_notify_target_failing{target="down"} 1' in text


def test_gateway_check_names_the_bad_notify_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from o2chain.cli import main

    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        '[[site]]\nid = "lhasa-hotel"\naltitude_m = 3650\n'
        '[[notify]]\nid = "duty"\nkind = "dingtalk"\nurl = "https://oapi.example/robot/send"\n'
        'quiet_hours = "22:00-7:00"\n'
    )
    assert main(["gateway", "check", "-c", str(cfg)]) != 0
    err = capsys.readouterr()
    assert "notify[0].quiet_hours" in err.out + err.err


def test_a_clear_never_overtakes_its_raise() -> None:
    """The raise is in backoff (target answered 500) when the alarm clears: the clear is due
    at once but waits for the raise, so nobody reads "cleared" before "raised"."""
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook(retry_initial_s=30)]), now)
    sender = FakeSender(["http_error"])
    w = notifier(h, {"ops": sender}).workers["ops"]
    h.commit(event("raise", now))
    w.step()  # 500: the raise is due again in 30 s
    h.clock.ms = now + 5_000
    h.commit(event("clear", now + 5_000, raised_ms=now))
    for _ in range(4):
        wait_s = w.step()
        h.clock.ms += max(1, int(wait_s * 1000))
    assert [m.data["event"] for m, _, _ in sender.sent] == ["raise", "raise", "clear"]


def test_rows_of_removed_targets_are_dropped_at_start() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("old"), hook("kept")]), now)
    h.commit(event("raise", now))
    again = NotifyQueue(h.db, h.lock, h._commit, [t for t in h.config.notify if t.id == "kept"],
                        clock_ms=h.clock)  # fmt: skip
    assert [(r["target"], r["state"]) for r in again.rows()] == [
        ("old", "cancelled"), ("kept", "pending"),
    ]  # fmt: skip
    assert set(again.stats(now)) == {"kept"}


def test_scheduled_escalations_are_pending_but_not_waiting() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook("boss", unacked_after_s=600)]), now)
    h.commit(event("raise", now))
    h.clock.ms = now + 300_000
    n = notifier(h, {"boss": FakeSender()})
    assert n.metrics()["depth"] == {"boss": 1}
    assert n.metrics()["oldest_age_s"] == {"boss": 0.0}  # not due yet: nobody is late
    h.clock.ms = now + 630_000
    assert n.metrics()["oldest_age_s"] == {"boss": 30.0}  # due 30 s ago, not sent


def test_offline_markdown_and_sms_forms() -> None:
    cfg = base_config([hook()], public_url="https://o2.hotel.example")
    ev = event("raise", shanghai_ms(2026, 12, 3, 3, 4))
    offline = {**ev.alarm, "rule": "device-offline", "kind": "offline", "field": None,
               "value": 45.2, "threshold": 30.0, "severity": "alarm"}  # fmt: skip
    m = compose("raise", {"ts_ms": ev.ts_ms, "alarm": offline}, cfg, cfg.notify[0], "k")
    assert "Now no data for 45 s" in m.text and "已 45 秒无数据" in m.text
    assert "power and network" in m.text and "[ALARM] Device offline" in m.text
    assert "[查看并确认 / View and acknowledge](https://o2.hotel.example/#alarm/" in m.markdown
    assert "(需操作员登录 / operator login required)" in m.markdown
    high = compose("raise", {"ts_ms": ev.ts_ms, "alarm": ev.alarm}, cfg, cfg.notify[0], "k")
    assert high.short.startswith("【严重】房间氧浓度过高(火灾风险) Lhasa Hotel / room-101 29.5 %")
    assert high.short.endswith("/#alarm/lhasa-hotel/room-101/room-o2-high")
    assert "45" not in m.short.split("|")[0]  # silence seconds are no reading


def test_a_message_that_cannot_be_built_does_not_block_the_others() -> None:
    now = shanghai_ms(2026, 12, 3, 12)
    h = Harness(base_config([hook(min_severity="warning")]), now)
    sender = FakeSender()
    w = notifier(h, {"ops": sender}).workers["ops"]
    h.commit(event("raise", now, severity="critical", device="room-odd"))
    h.commit(event("raise", now, severity="warning", rule="co2-warn"))
    with h.lock:  # a row whose payload lost its alarm (a bug, a hand-edited database)
        h.db.execute("UPDATE notify_queue SET payload = '{}' WHERE alarm_key LIKE '%room-odd%'")
    w.step()
    w.step()
    assert [m.data["rule"] for m, _, _ in sender.sent] == ["co2-warn"]
    assert [(r["kind"], r["state"], r["attempts"]) for r in h.queue.rows()] == [
        ("raise", "pending", 1), ("raise", "sent", 1),
    ]  # fmt: skip
    assert "KeyError" in h.queue.rows()[0]["last_error"]
