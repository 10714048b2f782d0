"""The InfluxDB writers (``[influx] api`` v1, v2, v3) against a second real database and
against strict stand-ins of the servers that cannot be installed here.

- **VictoriaMetrics** (Debian ``victoria-metrics``, a real server): it takes line protocol on
  InfluxDB 1.x's ``/write`` and 2.x's ``/api/v2/write``, so all three writers run against it,
  through the gateway's drainer, with the gateway's own encoded points.
- **InfluxDB 2.x and 3.x** have no Debian package: :class:`StrictInflux` answers like their
  documented write APIs and refuses what they refuse - a missing or wrong token, a missing or
  unknown org/bucket (2.x) or database (3.x), a precision they do not know, a line they cannot
  parse, a field whose type conflicts with what the database holds - and it keeps points the
  way they do (one per series and time), so a replay is seen as what it is. 2.x refuses a whole
  batch with a bad line; 3.x writes the good lines and answers 400 with the bad ones (a partial
  write). The drainer must end with every good point written once and only the bad ones
  dead-lettered, either way.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.config import InfluxSection
from gateway.influx import InfluxMisconfigured, InfluxRejected, make_writer
from gateway.lineproto import LineEncoder
from gateway.outbox import Outbox
from gateway.readings import Reading
from gateway.tests.http_helpers import QuietHandler, serving
from gateway.writer import OutboxDrainer
from o2base.services import VictoriaMetrics

TOKEN = "s3cret-token"


def section(url: str, tmp_path: Path, **kw: object) -> InfluxSection:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return InfluxSection.model_validate({"url": url, "token_file": token, **kw})


async def drain(outbox: Outbox, cfg: InfluxSection, batch_size: int = 1000) -> None:
    """Drain ``outbox`` through the writer of ``cfg`` until empty (bounded: 20 s)."""
    writer = make_writer(cfg)
    drainer = OutboxDrainer(outbox, writer, batch_size, 0.01, max_backoff_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(drainer.run(stop))
    deadline = time.monotonic() + 20
    while outbox.depth() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    writer.close()
    assert outbox.depth() == 0, "the drainer did not empty the outbox"


def room_points(n: int, device: str = "room-101", t0: int = 1_700_000_000_000) -> list[str]:
    """``n`` room readings as the gateway encodes them (floats, integers, a string flag)."""
    encoder = LineEncoder()
    lines = []
    for i in range(n):
        fields: dict[str, Any] = {"o2_pct": 21.0 + i / 100, "seq": i, "boot": 3}
        if i % 10 == 0:
            fields["baro_source"] = "isa"
        reading = Reading(
            "room", {"site": "lhasa", "device": device, "room": "101"}, fields, t0 + i
        )
        lines.append(encoder.encode(reading))
    return lines


# -- VictoriaMetrics: a real second database ------------------------------------------------


def samples(vm: VictoriaMetrics, metric: str) -> dict[tuple[tuple[str, str], ...], list[Any]]:
    """``labels -> [(timestamp, value), ...]`` of every series named ``metric``."""
    out = {}
    for series in vm.export(f'{{__name__="{metric}"}}'):
        labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k != "__name__"))
        out[labels] = list(zip(series["timestamps"], series["values"], strict=True))
    return out


@pytest.mark.integration
@pytest.mark.parametrize(
    ("api", "extra", "labels"),
    [
        ("v1", {"database": "o2chain"}, {"db": "o2chain"}),
        # VictoriaMetrics takes the v2 write without a token check and ignores org/bucket.
        ("v2", {"bucket": "o2chain", "org": "hospital"}, {}),
        ("v3", {"database": "o2chain"}, {}),
    ],
)
def test_every_writer_lands_each_point_once_in_victoria_metrics(
    victoria_metrics: VictoriaMetrics,
    tmp_path: Path,
    api: str,
    extra: dict[str, str],
    labels: dict[str, str],
) -> None:
    lines = room_points(500)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.commit(lines)
    outbox.commit(lines[100:300])  # a replayed stretch (a redelivered batch): the same points
    asyncio.run(drain(outbox, section(victoria_metrics.url, tmp_path, api=api, **extra), 128))
    o2 = samples(victoria_metrics, "room_o2_pct")
    want = tuple(sorted({"site": "lhasa", "device": "room-101", "room": "101", **labels}.items()))
    assert list(o2) == [want]
    # Exactly once as seen by a query, at the reading's millisecond, with its value.
    # (VictoriaMetrics keeps about 12 significant digits: 23.009999999999998 comes back 23.01.)
    got = [(t, round(v, 9)) for t, v in o2[want]]
    assert got == [(1_700_000_000_000 + i, round(21.0 + i / 100, 9)) for i in range(500)]
    seq = samples(victoria_metrics, "room_seq")[want]
    assert [v for _, v in seq] == list(range(500))


@pytest.mark.integration
def test_victoria_metrics_takes_a_whole_gateway_batch(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    """20 devices x 250 readings in batches of 5,000 points (the gateway's default)."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for d in range(20):
        outbox.commit(room_points(250, device=f"room-{d:03d}"))
    asyncio.run(drain(outbox, section(victoria_metrics.url, tmp_path, database="o2"), 5000))
    per_device = samples(victoria_metrics, "room_o2_pct")
    assert len(per_device) == 20
    assert {len(s) for s in per_device.values()} == {250}


# -- strict stand-ins of InfluxDB 2.x and 3.x -------------------------------------------------

_FIELD = re.compile(r'([^=,\s]+)=("(?:[^"\\]|\\.)*"|[^,\s]+)')
PRECISIONS = {"ns", "us", "ms", "s"}


def parse_line(line: str) -> tuple[str, dict[str, Any], int]:
    """``(series key, fields, timestamp)`` of one line of line protocol; ValueError if it is
    not one (strict where the servers are: a field, a value of a known type, an integer time)."""
    head, _, rest = re.sub(r"\\ ", "\x00", line).partition(" ")
    fields_text, _, stamp = rest.rpartition(" ")
    if not head or not fields_text or not re.fullmatch(r"-?\d+", stamp):
        raise ValueError(f"unable to parse '{line}': missing fields or timestamp")
    fields: dict[str, Any] = {}
    pos = 0
    while pos < len(fields_text):
        m = _FIELD.match(fields_text, pos)
        if m is None:
            raise ValueError(f"unable to parse '{line}': bad field at {pos}")
        name, raw = m.group(1), m.group(2)
        if raw.startswith('"'):
            fields[name] = raw[1:-1]
        elif re.fullmatch(r"-?\d+i", raw):
            fields[name] = int(raw[:-1])
        elif raw in ("t", "T", "true", "True", "f", "F", "false", "False"):
            fields[name] = raw.lower().startswith("t")
        else:
            try:
                fields[name] = float(raw)
            except ValueError:
                raise ValueError(f"unable to parse '{line}': invalid number {raw!r}") from None
        pos = m.end() + 1
    return head.replace("\x00", "\\ "), fields, int(stamp)


@dataclass
class StrictInflux:
    """InfluxDB 2.x (``flavour="v2"``) or 3.x (``"v3"``) as far as writes go."""

    flavour: str
    orgs: dict[str, set[str]] = field(default_factory=lambda: {"hospital": {"o2"}})
    points: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    types: dict[tuple[str, str, str], type] = field(default_factory=dict)
    answers: list[tuple[int, str]] = field(default_factory=list)
    url: str = ""

    def write(self, query: dict[str, list[str]], auth: str, body: str) -> tuple[int, str]:
        def error(status: int, code: str, message: str) -> tuple[int, str]:
            return status, json.dumps({"code": code, "message": message})

        scheme, _, token = auth.partition(" ")
        schemes = ("Token",) if self.flavour == "v2" else ("Token", "Bearer")
        if scheme not in schemes or token != TOKEN:
            return error(401, "unauthorized", "unauthorized access")
        precision = query.get("precision", ["ns"])[0]
        if precision not in PRECISIONS:
            return error(400, "invalid", f"invalid precision {precision!r}")
        bucket = query.get("bucket", [""])[0]
        if self.flavour == "v2":
            org = query.get("org", [""])[0]
            if not org:
                return error(400, "invalid", "Please provide either orgID or org")
            if org not in self.orgs:
                return error(404, "not found", f'organization name "{org}" not found')
            if not bucket:
                return error(400, "invalid", "Please provide bucket")
            if bucket not in self.orgs[org]:
                return error(404, "not found", f'bucket "{bucket}" not found')
        elif not bucket:  # InfluxDB 3: the database, created on first write
            return error(400, "invalid", "missing database (bucket)")
        good: list[tuple[str, dict[str, Any], int]] = []
        bad: list[dict[str, object]] = []
        for number, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                series, fields, stamp = parse_line(line)
                for name, value in fields.items():
                    known = self.types.setdefault((bucket, series.split(",")[0], name), type(value))
                    if known is not type(value):
                        raise ValueError(
                            f"field type conflict: {name} is {known.__name__}, "
                            f"got {type(value).__name__}"
                        )
            except ValueError as exc:
                bad.append(
                    {"original_line": line, "line_number": number, "error_message": str(exc)}
                )
                continue
            good.append((series, fields, stamp))
        if bad and self.flavour == "v2":  # 2.x: the whole request is refused
            return error(400, "invalid", str(bad[0]["error_message"]))
        for series, fields, stamp in good:
            self.points.setdefault((bucket, series, stamp), {}).update(fields)
        if bad:  # 3.x: the good lines are written, the bad ones listed
            partial = {"error": "partial write of line protocol occurred", "data": bad}
            return 400, json.dumps(partial)
        return 204, ""


@pytest.fixture(params=["v2", "v3"])
def strict(request: pytest.FixtureRequest) -> Iterator[StrictInflux]:
    state = StrictInflux(request.param)
    lock = threading.Lock()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            u = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            if u.path != "/api/v2/write":
                status, text = 404, '{"code":"not found","message":"path not found"}'
            else:
                with lock:
                    status, text = state.write(
                        parse_qs(u.query), self.headers.get("Authorization", ""), body
                    )
                    state.answers.append((status, text))
            self.reply(status, text.encode(), {"Content-Type": "application/json"})

    with serving(Handler) as state.url:
        yield state


def strict_section(s: StrictInflux, tmp_path: Path, **kw: object) -> InfluxSection:
    if s.flavour == "v2":
        return section(s.url, tmp_path, api="v2", bucket="o2", org="hospital", **kw)
    return section(s.url, tmp_path, api="v3", database="o2", **kw)


def test_the_writer_speaks_the_servers_write_api(strict: StrictInflux, tmp_path: Path) -> None:
    lines = room_points(50)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.commit(lines)
    outbox.commit(lines[10:20])  # replayed: the same points again
    asyncio.run(drain(outbox, strict_section(strict, tmp_path)))
    assert {status for status, _ in strict.answers} == {204}
    assert len(strict.points) == 50  # one point per series and millisecond
    assert sorted(stamp for _, _, stamp in strict.points) == [
        1_700_000_000_000 + i for i in range(50)
    ]
    assert outbox.dead_letters() == []


def test_a_wrong_token_or_bucket_is_the_gateways_fault_and_nothing_is_dead_lettered(
    strict: StrictInflux, tmp_path: Path
) -> None:
    cfg = strict_section(strict, tmp_path)
    (tmp_path / "token").write_text("wrong\n")
    with pytest.raises(InfluxMisconfigured, match="401"):
        make_writer(cfg).write(room_points(1))
    (tmp_path / "token").write_text(TOKEN + "\n")
    if strict.flavour == "v2":
        cfg = section(strict.url, tmp_path, api="v2", bucket="nope", org="hospital")
        with pytest.raises(InfluxMisconfigured, match="404"):
            make_writer(cfg).write(room_points(1))
        cfg = section(strict.url, tmp_path, api="v2", bucket="o2", org="nobody")
        with pytest.raises(InfluxMisconfigured, match="404"):
            make_writer(cfg).write(room_points(1))
    assert strict.points == {}


def test_a_bad_point_is_dead_lettered_alone_whether_the_server_writes_partially_or_not(
    strict: StrictInflux, tmp_path: Path
) -> None:
    """A field whose type conflicts with what the database holds (``o2_pct`` as text): 2.x
    refuses the batch, 3.x writes the rest and lists the line; the drainer bisects either way."""
    lines = room_points(40)
    poison = lines[25].replace("o2_pct=21.25", 'o2_pct="21.25"')
    assert poison != lines[25]
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.commit([*lines[:25], poison, *lines[26:]])
    asyncio.run(drain(outbox, strict_section(strict, tmp_path)))
    (letter,) = outbox.dead_letters()
    assert (letter.source, letter.reason, letter.payload) == ("influx", "http_400", poison.encode())
    assert "field type conflict" in letter.detail
    stamps = sorted(stamp for _, _, stamp in strict.points)
    assert stamps == [1_700_000_000_000 + i for i in range(40) if i != 25]
    partial = [t for status, t in strict.answers if status == 400 and "partial write" in t]
    assert bool(partial) == (strict.flavour == "v3")


def test_the_stand_in_is_strict(strict: StrictInflux) -> None:
    """What the stand-in refuses, the servers refuse (so the tests above can fail)."""
    ok = "m,site=a v=1 1"
    good_query = {"bucket": ["o2"], "org": ["hospital"], "precision": ["ms"]}
    assert strict.write(good_query, f"Token {TOKEN}", ok)[0] == 204
    assert strict.write(good_query, "Token nope", ok)[0] == 401
    assert strict.write(good_query, "", ok)[0] == 401
    assert strict.write({**good_query, "precision": ["ms2"]}, f"Token {TOKEN}", ok)[0] == 400
    assert strict.write({**good_query, "bucket": [""]}, f"Token {TOKEN}", ok)[0] == 400
    assert strict.write(good_query, f"Token {TOKEN}", "m v= 1")[0] == 400
    assert strict.write(good_query, f"Token {TOKEN}", "m v=1")[0] == 400  # no timestamp
    if strict.flavour == "v2":
        assert strict.write({**good_query, "org": [""]}, f"Token {TOKEN}", ok)[0] == 400
        assert strict.write({**good_query, "bucket": ["x"]}, f"Token {TOKEN}", ok)[0] == 404
        assert strict.write(good_query, f"Bearer {TOKEN}", ok)[0] == 401
    else:
        assert strict.write({"bucket": ["new-db"]}, f"Bearer {TOKEN}", ok)[0] == 204


def test_v1_token_header_is_sent_to_influxdb_3s_v1_endpoint(tmp_path: Path) -> None:
    """InfluxDB 3 also answers ``/write?db=`` with a token: the v1 writer sends it."""
    seen: list[str] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.headers.get("Authorization", ""))
            self.reply(204 if self.headers.get("Authorization") == f"Token {TOKEN}" else 401)

    with serving(Handler) as url:
        writer = make_writer(section(url, tmp_path))
        writer.write(room_points(3))
        writer.close()
    assert seen and set(seen) == {f"Token {TOKEN}"}


def test_rejected_is_not_misconfigured() -> None:
    assert not issubclass(InfluxRejected, InfluxMisconfigured)
