"""Dead-letter replay: after a config fix (a device added, a range widened), validate the kept
messages again and move those that now pass into the outbox.

- ``mqtt`` letters (rejected telemetry, or a pipeline failure) are decoded and validated again
  with the current config, time-checked against the time they were first received, and their
  readings committed; the letter is deleted in the same transaction.
- ``influx`` letters (points InfluxDB refused) are queued again as they are, for when the
  database side was fixed (e.g. a field type conflict resolved by a new database).

A dead letter whose payload was cut when it was kept (longer than
:data:`gateway.outbox.DEADLETTER_PAYLOAD_MAX`) is never replayed: what is left is not the
message. It stays, listed in :attr:`ReplayResult.truncated`.

Replayed readings skip the duplicate tracker (the operator asked for them) and, in the CLI, the
enrichment and alarm stages (they are old; alarms act on the present). Points are idempotent,
so a replay of something already in InfluxDB overwrites it with the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import GatewayConfig
from gateway.lineproto import LineEncoder
from gateway.outbox import DEADLETTER_PAYLOAD_MAX, DeadLetter, Outbox
from gateway.readings import Reading
from gateway.telemetry import Reject, TelemetryDecoder


@dataclass
class ReplayResult:
    replayed: list[int] = field(default_factory=list)  # dead-letter ids, now in the outbox
    points: int = 0
    still_rejected: dict[int, str] = field(default_factory=dict)  # id -> reason now
    truncated: list[int] = field(default_factory=list)  # ids kept cut: never replayed

    def truncated_line(self) -> str | None:
        """The one line saying which dead letters were not replayed as cut, or None."""
        if not self.truncated:
            return None
        ids = ", ".join(str(i) for i in self.truncated[:20])
        more = f" and {len(self.truncated) - 20} more" if len(self.truncated) > 20 else ""
        return (
            f"{len(self.truncated)} dead letter(s) not replayed: their payload was kept cut at "
            f"{DEADLETTER_PAYLOAD_MAX} bytes, it is not the message any more (ids {ids}{more})"
        )


def replay(
    config: GatewayConfig,
    outbox: Outbox,
    select: Callable[[DeadLetter], bool] = lambda dl: True,
    process: Callable[[list[Reading]], list[Reading]] = lambda readings: readings,
    limit: int = 100_000,
) -> ReplayResult:
    """Replay the selected dead letters (oldest first, at most ``limit``)."""
    decoder, encoder = TelemetryDecoder(config), LineEncoder()
    result = ReplayResult()
    after = 0
    while len(result.replayed) + len(result.still_rejected) < limit:
        letters = outbox.dead_letters(limit=500, after_id=after)
        if not letters:
            break
        for dl in letters:
            after = dl.id
            if not select(dl):
                continue
            if dl.truncated:
                result.truncated.append(dl.id)
                result.still_rejected[dl.id] = (
                    f"truncated: {len(dl.payload)} of {dl.payload_len} bytes kept "
                    f"(sha256 {dl.payload_sha256}); cannot be replayed as data"
                )
                continue
            if dl.source == "influx":
                lines = [dl.payload.decode()]
            else:
                try:
                    readings = decoder.decode(dl.topic, dl.payload, dl.received_ms)
                    lines = [encoder.encode(r) for r in process(readings)]
                except Reject as rej:
                    result.still_rejected[dl.id] = f"{rej.reason}: {rej.detail}"
                    continue
            outbox.replace_dead_letter(dl.id, lines)
            result.replayed.append(dl.id)
            result.points += len(lines)
    return result
