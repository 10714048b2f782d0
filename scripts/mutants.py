#!/usr/bin/env python3
"""Hand-written mutants of the gateway's delivery guarantee: each one breaks a promise of
gateway/README.md ("What happens to a message", "Alarms") and must make a named test fail.

    .venv/bin/python scripts/mutants.py                 # all mutants, a table at the end
    .venv/bin/python scripts/mutants.py --list          # names and what each one breaks
    .venv/bin/python scripts/mutants.py -k dedup        # only mutants whose name contains it
    .venv/bin/python scripts/mutants.py --without-new   # without gateway/tests/test_guarantees_*

Each mutant is (file, exact original snippet, mutated snippet, tests). The script copies the
worktree's files (tracked and untracked, not ignored) into a temporary directory, checks that
the named tests pass there unmutated, then for each mutant replaces the snippet in the copy,
runs the tests with a timeout and puts the file back. The worktree itself is never written:
its ``git status`` and the mutated files' hashes are compared before and after, and a
difference is an error (exit 2). A survivor makes the exit status 1.

A snippet that no longer occurs exactly once is reported as ``stale``: the code moved, the
mutant must follow it. The power-cut test needs root (loop devices); without it that test
skips and ``outbox-sync-setting-ignored`` survives.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEW_TESTS = "gateway/tests/test_guarantees_"

INGEST_UNIT = "gateway/tests/test_ingest_batch.py"
DEDUP_UNIT = "gateway/tests/test_delivery_dedup.py"
WRITER_UNIT = "gateway/tests/test_writer.py"
WRITERS_HTTP = "gateway/tests/test_delivery_writers.py"
ALARMS_UNIT = "gateway/tests/test_alarms.py"
ALARM_DELIVERY = "gateway/tests/test_alarm_delivery.py"
PHYSICS = "gateway/tests/test_alarm_physics.py"
DECODER = "gateway/tests/test_validation_decoder.py"
TELEMETRY = "gateway/tests/test_telemetry.py"
G_INGEST = "gateway/tests/test_guarantees_ingest.py"
G_OUTBOX = "gateway/tests/test_guarantees_outbox.py"
G_DEDUP = "gateway/tests/test_guarantees_dedup.py"
G_ALARMS = "gateway/tests/test_guarantees_alarms.py"
G_VALIDATION = "gateway/tests/test_guarantees_validation.py"
G_POWER = "gateway/tests/test_guarantees_power_loss.py"  # needs root: loop devices


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]
    breaks: str  # the promise it breaks


# mqtt_ingest.py commits a batch, then announces its alarm events (a mutant swaps the two).
_INGEST_COMMIT = (
    "                self.outbox.commit(\n"
    "                    out.lines,\n"
    "                    dead,\n"
    "                    seq_rows,\n"
    "                    keep_lines=keep_lines,\n"
    "                    also=self.alarm_writer(events) if events else None,\n"
    "                )\n"
    "                if reported:\n"
    '                    log.info("outbox accepts again")\n'
)
_INGEST_ANNOUNCE = "                if events:\n                    self.announce(events)\n"

MUTANTS: list[Mutant] = [
    # -- mqtt_ingest.py: ack only after the commit, only on the connection it belongs to ------
    Mutant(
        "ingest-ack-before-commit",
        "gateway/mqtt_ingest.py",
        "        self._commit_until_done(out, dead)\n"
        "        self.reject_log.flush()\n"
        "        self.stats.readings += len(out.lines)\n"
        "        self.stats.commits += 1\n"
        "        if self.hold_acks is None:\n"
        "            self._ack(batch)\n",
        "        if self.hold_acks is None:\n"
        "            self._ack(batch)\n"
        "        self._commit_until_done(out, dead)\n"
        "        self.reject_log.flush()\n"
        "        self.stats.readings += len(out.lines)\n"
        "        self.stats.commits += 1\n"
        "        if self.hold_acks is None:\n"
        "            pass\n",
        (INGEST_UNIT, G_INGEST),
        "messages acknowledged before their SQLite commit",
    ),
    Mutant(
        "ingest-ack-while-commit-fails",
        "gateway/mqtt_ingest.py",
        "                with self._queue_cond:\n"
        "                    self._queue_cond.wait_for(lambda: self._stopping, timeout=delay)\n",
        "                return\n",
        (INGEST_UNIT, G_INGEST),
        "a failing commit given up on and the batch acknowledged anyway",
    ),
    Mutant(
        "ingest-ack-without-connection-check",
        "gateway/mqtt_ingest.py",
        "                if queued.connection != current:\n",
        "                if False:\n",
        (INGEST_UNIT, G_INGEST),
        "a packet id of an earlier connection acknowledged on the new one",
    ),
    Mutant(
        "ingest-disconnect-keeps-connection",
        "gateway/mqtt_ingest.py",
        "            self._connection += 1  # packet ids of the old connection mean "
        "nothing any more\n",
        "            pass\n",
        (INGEST_UNIT, G_INGEST),
        "a reconnect not noticed: the old connection's packet ids acknowledged on the new one",
    ),
    Mutant(
        "ingest-acked-counted-on-failure",
        "gateway/mqtt_ingest.py",
        '                    log.error("MQTT acknowledgements failed (%d so far)", '
        "self.stats.ack_failures)\n"
        "                return\n",
        '                    log.error("MQTT acknowledgements failed (%d so far)", '
        "self.stats.ack_failures)\n",
        (INGEST_UNIT, G_INGEST),
        "failed acknowledgements counted as acknowledged",
    ),
    Mutant(
        "ingest-duplicate-passed-on",
        "gateway/mqtt_ingest.py",
        "            if check.verdict is Verdict.DUPLICATE:\n"
        "                self.stats.duplicates += 1\n"
        "                continue\n",
        "            if check.verdict is Verdict.DUPLICATE:\n"
        "                self.stats.duplicates += 1\n",
        (INGEST_UNIT, G_INGEST),
        "a (boot, seq) already committed stored again",
    ),
    Mutant(
        "ingest-announce-before-commit",
        "gateway/mqtt_ingest.py",
        _INGEST_COMMIT + _INGEST_ANNOUNCE,
        _INGEST_ANNOUNCE + _INGEST_COMMIT,  # the same two blocks, swapped
        (INGEST_UNIT, ALARM_DELIVERY, G_INGEST),
        "an alarm announced (MQTT, live page) before its point and state are committed",
    ),
    Mutant(
        "ingest-announce-before-commit-at-full",
        "gateway/mqtt_ingest.py",
        "                    self.outbox.commit([], keep_lines=keep_lines, also=also)\n"
        "                    if events:\n"
        "                        self.announce(events)\n",
        "                    if events:\n"
        "                        self.announce(events)\n"
        "                    self.outbox.commit([], keep_lines=keep_lines, also=also)\n",
        (INGEST_UNIT, ALARM_DELIVERY, G_INGEST),
        "at a full outbox, an alarm announced before its point and state are committed",
    ),
    # -- outbox.py: rows leave only after InfluxDB accepted them; the bound; alarm rows ---------
    Mutant(
        "outbox-seq-state-not-committed",
        "gateway/outbox.py",
        "                if seq_rows:\n"
        "                    self._db.executemany(\n"
        '                        "INSERT OR REPLACE INTO seqstate '
        '(device, boot, max_seq, window) "\n'
        '                        "VALUES (?, ?, ?, ?)",\n'
        "                        seq_rows,\n"
        "                    )\n"
        '                self._db.execute("COMMIT")\n',
        '                self._db.execute("COMMIT")\n',
        (DEDUP_UNIT, INGEST_UNIT, G_INGEST, G_DEDUP),
        "the duplicate tracker's state not committed with the readings",
    ),
    Mutant(
        "outbox-big-batch-waits-forever",
        "gateway/outbox.py",
        "            full = self._bytes > 0 and self._bytes + size > self.max_bytes\n",
        "            full = self._bytes + size > self.max_bytes\n",
        (DEDUP_UNIT, ALARM_DELIVERY, G_OUTBOX),
        "a batch bigger than the whole bound refused even by an empty outbox: ingest stalls",
    ),
    Mutant(
        "outbox-remove-through-keeps-last",
        "gateway/outbox.py",
        '            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))\n',
        '            self._db.execute("DELETE FROM outbox WHERE id < ?", (last_id,))\n',
        (DEDUP_UNIT, WRITER_UNIT, G_OUTBOX),
        "the last accepted row written again and again",
    ),
    Mutant(
        "outbox-remove-through-one-too-many",
        "gateway/outbox.py",
        '            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))\n',
        '            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id + 1,))\n',
        (DEDUP_UNIT, WRITER_UNIT, G_OUTBOX),
        "a row InfluxDB never saw deleted",
    ),
    Mutant(
        "outbox-drop-oldest-takes-keep-rows",
        "gateway/outbox.py",
        '            self._db.execute("DELETE FROM outbox WHERE id <= ? AND keep = 0", '
        "(last_id,))\n",
        '            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))\n',
        (DEDUP_UNIT, ALARM_DELIVERY, G_OUTBOX),
        "alarm points deleted to make room",
    ),
    Mutant(
        "outbox-drop-oldest-counts-keep-rows",
        "gateway/outbox.py",
        '            "SELECT id, LENGTH(line), points FROM outbox WHERE keep = 0 ORDER BY id"\n',
        '            "SELECT id, LENGTH(line), points FROM outbox ORDER BY id"\n',
        (DEDUP_UNIT, ALARM_DELIVERY, G_OUTBOX),
        "alarm rows counted as freed though they stay: the bound no longer holds",
    ),
    Mutant(
        "outbox-commit-without-also",
        "gateway/outbox.py",
        "                if also is not None:\n                    also(self._db)\n",
        "                pass\n",
        (ALARM_DELIVERY, G_OUTBOX),
        "alarm state not written with its point",
    ),
    Mutant(
        "outbox-also-after-commit",
        "gateway/outbox.py",
        "                if also is not None:\n"
        "                    also(self._db)\n"
        "                if dead_letters:\n",
        "                if dead_letters:\n",
        (ALARM_DELIVERY, G_OUTBOX),
        "alarm state written in a transaction of its own, after the point's",
    ),
    Mutant(
        "outbox-keep-lines-stored-as-lines",
        "gateway/outbox.py",
        "                    [(text, now, n, 1) for text, n in kept]\n",
        "                    [(text, now, n, 0) for text, n in kept]\n",
        (ALARM_DELIVERY, G_OUTBOX),
        "alarm points stored as ordinary rows (drop_oldest may take them)",
    ),
    Mutant(
        "outbox-keep-lines-refused-at-bound",
        "gateway/outbox.py",
        "            if lines and full and self.policy is FullPolicy.BLOCK:\n",
        "            if (lines or keep_lines) and full and self.policy is FullPolicy.BLOCK:\n",
        (ALARM_DELIVERY, G_OUTBOX),
        "alarm points refused at a full outbox",
    ),
    Mutant(
        "outbox-keep-bytes-not-counted",
        "gateway/outbox.py",
        "            self._bytes += size + kept_size\n",
        "            self._bytes += size\n",
        (ALARM_DELIVERY, DEDUP_UNIT, G_OUTBOX),
        "alarm rows left out of the bound's byte count",
    ),
    Mutant(
        "outbox-sync-setting-ignored",
        "gateway/outbox.py",
        '        self._db.execute(f"PRAGMA synchronous={synchronous}")\n',
        '        self._db.execute("PRAGMA synchronous=NORMAL")\n',
        (WRITER_UNIT, DEDUP_UNIT, G_POWER),
        "outbox_sync = full not applied: commits that returned are lost in a power cut",
    ),
    Mutant(
        "app-outbox-sync-not-passed",
        "gateway/app.py",
        "            synchronous=config.gateway.outbox_sync.upper(),\n",
        "",
        (ALARM_DELIVERY, G_OUTBOX),
        "the gateway's outbox_sync setting never reaches SQLite",
    ),
    Mutant(
        "outbox-rollback-keeps-byte-count",
        "gateway/outbox.py",
        '                self._db.execute("ROLLBACK")\n'
        "                self._recount()\n"
        "                # The dropped rows are back",
        '                self._db.execute("ROLLBACK")\n                # The dropped rows are back',
        (DEDUP_UNIT, ALARM_DELIVERY, G_OUTBOX),
        "after a failed commit that dropped rows, the outbox counts bytes it still holds as gone",
    ),
    Mutant(
        "outbox-rollback-keeps-drop-count",
        "gateway/outbox.py",
        "                self.stats.dropped_oldest = points_dropped_before\n",
        "",
        (DEDUP_UNIT, ALARM_DELIVERY, G_OUTBOX),
        "points reported dropped by a commit that rolled back (and again on every retry)",
    ),
    # -- dedup.py: (device, boot, seq) ------------------------------------------------------
    Mutant(
        "dedup-window-off-by-one",
        "gateway/dedup.py",
        "        if age >= WINDOW:\n",
        "        if age > WINDOW:\n",
        (DEDUP_UNIT, G_DEDUP),
        "a seq just past the window judged with a bit the window does not hold",
    ),
    Mutant(
        "dedup-window-one-short",
        "gateway/dedup.py",
        "_FULL = (1 << WINDOW) - 1\n",
        "_FULL = (1 << (WINDOW - 1)) - 1\n",
        (DEDUP_UNIT, G_DEDUP),
        "the oldest seq of the window forgotten: its duplicate stored again",
    ),
    Mutant(
        "dedup-duplicate-is-late",
        "gateway/dedup.py",
        "        if state.window & bit:\n",
        "        if state.window & bit and False:\n",
        (DEDUP_UNIT, G_DEDUP),
        "a duplicate inside the window treated as new",
    ),
    Mutant(
        "dedup-first-seq-not-marked",
        "gateway/dedup.py",
        "            per_boot[boot] = BootState(seq, 1)\n",
        "            per_boot[boot] = BootState(seq, 0)\n",
        (DEDUP_UNIT, G_DEDUP),
        "the first reading of a boot accepted twice",
    ),
    Mutant(
        "dedup-late-fill-not-saved",
        "gateway/dedup.py",
        "        self.dirty.add((device, boot))\n        counters.late += 1\n",
        "        counters.late += 1\n",
        (DEDUP_UNIT, INGEST_UNIT, G_DEDUP),
        "a late reading stored again after a restart (its bit never committed)",
    ),
    Mutant(
        "dedup-restored-window-lost",
        "gateway/dedup.py",
        "            per_boot[boot] = BootState(max_seq, int.from_bytes(window) & _FULL)\n",
        "            per_boot[boot] = BootState(max_seq, 1)\n",
        (DEDUP_UNIT, G_DEDUP),
        "after a restart, redelivered seqs below the highest treated as new",
    ),
    Mutant(
        "dedup-gap-of-one-ignored",
        "gateway/dedup.py",
        "            if shift > 1:\n",
        "            if shift > 2:\n",
        (DEDUP_UNIT, G_DEDUP),
        "one missing reading not counted as a gap",
    ),
    Mutant(
        "dedup-gap-end-off-by-one",
        "gateway/dedup.py",
        "                check = Check(Verdict.NEW, state.max_seq + 1, seq - 1)\n",
        "                check = Check(Verdict.NEW, state.max_seq + 1, seq)\n",
        (DEDUP_UNIT, G_DEDUP),
        "the gap report names a seq that arrived",
    ),
    Mutant(
        "dedup-missing-counts-arrived",
        "gateway/dedup.py",
        "                counters.missing += shift - 1\n",
        "                counters.missing += shift\n",
        (DEDUP_UNIT, G_DEDUP),
        "missing readings over-counted",
    ),
    Mutant(
        "dedup-late-still-missing",
        "gateway/dedup.py",
        "        counters.missing = max(0, counters.missing - 1)\n",
        "",
        (DEDUP_UNIT, G_DEDUP),
        "a late reading still counted missing",
    ),
    # -- rules.py: operators and hysteresis ------------------------------------------------
    Mutant(
        "rules-gt-inclusive",
        "gateway/rules.py",
        '    if op == ">":\n        return value > threshold\n',
        '    if op == ">":\n        return value >= threshold\n',
        (ALARMS_UNIT, PHYSICS, G_ALARMS),
        "a value on the threshold raises a strict > rule",
    ),
    Mutant(
        "rules-lt-ge-swapped",
        "gateway/rules.py",
        '    if op == "<":\n        return value < threshold\n    return value <= threshold\n',
        '    if op == "<":\n        return value <= threshold\n    return value < threshold\n',
        (ALARMS_UNIT, PHYSICS, G_ALARMS),
        "< and <= exchanged",
    ),
    Mutant(
        "rules-ge-strict",
        "gateway/rules.py",
        '    if op == ">=":\n        return value >= threshold\n',
        '    if op == ">=":\n        return value > threshold\n',
        (ALARMS_UNIT, PHYSICS, G_ALARMS),
        "a value on the threshold does not raise a >= rule",
    ),
    Mutant(
        "rules-hysteresis-sign-high",
        "gateway/rules.py",
        "        return value < threshold - hysteresis\n",
        "        return value < threshold + hysteresis\n",
        (ALARMS_UNIT, PHYSICS, G_ALARMS),
        "a high alarm clears inside its hysteresis band",
    ),
    Mutant(
        "rules-hysteresis-sign-low",
        "gateway/rules.py",
        "    return value > threshold + hysteresis\n",
        "    return value > threshold - hysteresis\n",
        (ALARMS_UNIT, PHYSICS, G_ALARMS),
        "a low alarm clears inside its hysteresis band",
    ),
    Mutant(
        "rules-hysteresis-ge-as-low",
        "gateway/rules.py",
        '    if op in (">", ">="):\n',
        '    if op == ">":\n',
        (ALARMS_UNIT, PHYSICS, G_ALARMS),
        "a >= rule with hysteresis clears as if it were a low alarm",
    ),
    Mutant(
        "rules-zero-hysteresis-on-threshold",
        "gateway/rules.py",
        "    if hysteresis <= 0:\n",
        "    if hysteresis < 0:\n",
        (ALARMS_UNIT, PHYSICS, G_ALARMS),
        "without hysteresis, a value back on the threshold does not clear",
    ),
    # -- alarms.py: readings' own time, delays ------------------------------------------------
    Mutant(
        "alarms-older-reading-judged",
        "gateway/alarms.py",
        "            if st.last_ts_ms is not None and ts < st.last_ts_ms:\n"
        "                continue  # an older replayed reading: already past it\n",
        "",
        (ALARMS_UNIT, G_ALARMS),
        "an older replayed reading judged after newer ones",
    ),
    Mutant(
        "alarms-older-status-judged",
        "gateway/alarms.py",
        "            if st.last_ts_ms is not None and r.ts_ms < st.last_ts_ms:\n"
        "                continue\n",
        "",
        (ALARMS_UNIT, G_ALARMS),
        "an older status judged after newer ones",
    ),
    Mutant(
        "alarms-older-flag-judged",
        "gateway/alarms.py",
        "        if st.last_ts_ms is not None and ts < st.last_ts_ms:\n            return\n",
        "",
        (ALARMS_UNIT, G_ALARMS),
        "an older reading's flag judged after newer ones",
    ),
    Mutant(
        "alarms-on-delay-strict",
        "gateway/alarms.py",
        "            if t_ms - st.pending_since_ms >= rule.on_delay_s * 1000:\n",
        "            if t_ms - st.pending_since_ms > rule.on_delay_s * 1000:\n",
        (ALARMS_UNIT, G_ALARMS),
        "raised a reading later than its on-delay",
    ),
    Mutant(
        "alarms-off-delay-strict",
        "gateway/alarms.py",
        "        if t_ms - st.clearing_since_ms >= rule.off_delay_s * 1000:\n",
        "        if t_ms - st.clearing_since_ms > rule.off_delay_s * 1000:\n",
        (ALARMS_UNIT, G_ALARMS),
        "cleared a reading later than its off-delay",
    ),
    Mutant(
        "alarms-tick-on-delay-strict",
        "gateway/alarms.py",
        "                    if now - pending >= on_ms:\n",
        "                    if now - pending > on_ms:\n",
        (ALARMS_UNIT, G_ALARMS),
        "the tick raises later than the on-delay",
    ),
    Mutant(
        "alarms-tick-off-delay-strict",
        "gateway/alarms.py",
        "                    and now - clearing >= off_ms\n",
        "                    and now - clearing > off_ms\n",
        (ALARMS_UNIT, G_ALARMS),
        "the tick clears later than the off-delay",
    ),
    Mutant(
        "alarms-tick-raise-on-reading-time",
        "gateway/alarms.py",
        "                pending = None if st.pending_since_ms is None else st.pending_wall_ms\n",
        "                pending = st.pending_since_ms\n",
        (ALARMS_UNIT, G_ALARMS),
        "the tick completes an on-delay by an old reading's age",
    ),
    Mutant(
        "alarms-tick-clear-on-reading-time",
        "gateway/alarms.py",
        "                clearing = None if st.clearing_since_ms is None "
        "else st.clearing_wall_ms\n",
        "                clearing = st.clearing_since_ms\n",
        (ALARMS_UNIT, G_ALARMS),
        "the tick completes an off-delay by an old reading's age",
    ),
    # -- writer.py / influx.py: nothing leaves before InfluxDB accepted it ------------------
    Mutant(
        "writer-dead-letters-5xx",
        "gateway/writer.py",
        "        except (InfluxRejected, InfluxTooLarge) as exc:\n"
        "            status = exc.status\n",
        "        except (InfluxRejected, InfluxTooLarge, InfluxUnavailable) as exc:\n"
        '            status = getattr(exc, "status", 503)\n',
        (WRITER_UNIT, WRITERS_HTTP, G_OUTBOX),
        "points dead-lettered when InfluxDB is only unavailable",
    ),
    Mutant(
        "influx-500-is-a-reject",
        "gateway/influx.py",
        "    if status == 429 or status >= 500:\n",
        "    if status == 429 or status > 500:\n",
        (WRITER_UNIT, WRITERS_HTTP, G_OUTBOX),
        "HTTP 500 dead-letters points instead of retrying",
    ),
    Mutant(
        "writer-remove-before-write",
        "gateway/writer.py",
        "            try:\n"
        "                for start in range(0, len(batch.lines), self.batch_size):\n",
        "            self.outbox.remove_through(batch.ids[-1])\n"
        "            try:\n"
        "                for start in range(0, len(batch.lines), self.batch_size):\n",
        (WRITER_UNIT, WRITERS_HTTP, G_OUTBOX),
        "rows deleted before InfluxDB accepted them",
    ),
    Mutant(
        "writer-ignores-retry-after",
        "gateway/writer.py",
        "                delay = exc.retry_after_s if exc.retry_after_s is not None else backoff\n",
        "                delay = backoff\n",
        (WRITER_UNIT, WRITERS_HTTP),
        "InfluxDB's Retry-After ignored: a busy server is hammered",
    ),
    Mutant(
        "writer-retry-after-uncapped",
        "gateway/writer.py",
        "                delay = min(delay, MAX_RETRY_AFTER_S)  # a silly Retry-After is capped\n",
        "",
        (WRITER_UNIT, WRITERS_HTTP),
        "a silly Retry-After stops delivery for as long as it says",
    ),
    # -- state_store.py: the alarm's state and log in the point's transaction ----------------
    Mutant(
        "state-writer-skips-log",
        "gateway/state_store.py",
        "                db.execute(\n"
        '                    "INSERT INTO alarm_log (ts_ms, event) VALUES (?, ?)",\n'
        "                    (event.ts_ms, json.dumps(event.to_json())),\n"
        "                )\n",
        "",
        (ALARM_DELIVERY, ALARMS_UNIT, G_ALARMS),
        "alarm events missing from the log that survives restarts",
    ),
    Mutant(
        "state-writer-skips-state",
        "gateway/state_store.py",
        "                    db.execute(\n"
        '                        "INSERT OR REPLACE INTO alarm_state (key, state) VALUES (?, ?)",\n'
        "                        (event.key, json.dumps(event.persisted, sort_keys=True)),\n"
        "                    )\n",
        "                    pass\n",
        (ALARM_DELIVERY, ALARMS_UNIT, G_ALARMS),
        "an alarm's lifecycle not stored with its point",
    ),
    Mutant(
        "state-writer-skips-hooks",
        "gateway/state_store.py",
        "            for extra in self.also_write:\n                extra(db, events)\n",
        "",
        (ALARM_DELIVERY, G_ALARMS),
        "notifications owed by an event not queued in its transaction",
    ),
    # -- telemetry.py / readings.py: a flagged field is never a number ----------------------
    Mutant(
        "telemetry-out-of-range-kept",
        "gateway/telemetry.py",
        '                    f"{name} = {value!r:.40} {lim.unit}, '
        'expected {lim.low}..{lim.high}",\n'
        "                )\n"
        "                continue\n",
        '                    f"{name} = {value!r:.40} {lim.unit}, '
        'expected {lim.low}..{lim.high}",\n'
        "                )\n",
        (TELEMETRY, DECODER, INGEST_UNIT, G_VALIDATION),
        "an out-of-range value flagged and stored as a number too",
    ),
    Mutant(
        "telemetry-non-integer-kept",
        "gateway/telemetry.py",
        '                        at, name, InvalidReason.BAD_TYPE, f"{name} = {value!r}, '
        'expected an integer"\n'
        "                    )\n"
        "                    continue\n",
        '                        at, name, InvalidReason.BAD_TYPE, f"{name} = {value!r}, '
        'expected an integer"\n'
        "                    )\n",
        (TELEMETRY, DECODER, G_VALIDATION),
        "a fractional count flagged and stored truncated",
    ),
    Mutant(
        "readings-flag-keeps-number",
        "gateway/readings.py",
        "    fields.pop(name, None)\n",
        "",
        (TELEMETRY, DECODER, G_VALIDATION),
        "a field flagged after it was stored (baro_kpa outside the site's band) stays a number",
    ),
]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def _tree_fingerprint(files: set[str]) -> tuple[str, dict[str, str]]:
    """What must not change: ``git status`` and the bytes of every file a mutant names."""
    hashes = {f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest() for f in sorted(files)}
    return _git("status", "--porcelain", "--untracked-files=all"), hashes


def _copy_tree(dest: Path) -> None:
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if not src.is_file():
            continue  # deleted in the work tree, or a dangling link
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The copy's packages first, for pytest and the processes tests start; no bytecode
    # caches, so a mutant of the same size and second as the original is never run stale.
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _pytest(copy: Path, tests: list[str], timeout_s: float) -> tuple[str, float, str]:
    """Run ``tests`` in the copy; ("pass" | "fail" | "timeout" | "error rc=N", s, output)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return "timeout", time.monotonic() - started, out
    seconds = time.monotonic() - started
    out = done.stdout + done.stderr
    if done.returncode == 0:
        return "pass", seconds, out
    if done.returncode == 1:
        return "fail", seconds, out
    return f"error rc={done.returncode}", seconds, out


def _tests_for(m: Mutant, without_new: bool) -> list[str]:
    return [t for t in m.tests if not (without_new and t.startswith(NEW_TESTS))]


def _first_failure(output: str) -> str:
    for line in output.splitlines():  # pytest's short summary: "FAILED path::test - why"
        if line.startswith(("FAILED ", "ERROR ")) and "::" in line:
            return line.split(" ", 1)[1].split(" - ", 1)[0][:110]
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", dest="select", default="", help="only mutants whose name contains it")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--without-new", action="store_true", help=f"leave out {NEW_TESTS}*")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    ap.add_argument("-v", action="store_true", help="print pytest's output of survivors")
    args = ap.parse_args()

    mutants = [m for m in MUTANTS if args.select in m.name]
    if args.list:
        for m in mutants:
            print(f"{m.name:40} {m.file:24} {m.breaks}")
        return 0
    if not mutants:
        print(f"no mutant matches {args.select!r}", file=sys.stderr)
        return 2

    before = _tree_fingerprint({m.file for m in mutants})
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="o2chain-mutants-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        probe = subprocess.run(
            [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
            cwd=copy,
            env=_env(copy),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not probe.startswith(str(copy)):
            print(f"the copy's gateway is not the one imported ({probe})", file=sys.stderr)
            return 2
        union = sorted({t for m in mutants for t in _tests_for(m, args.without_new)})
        print(f"baseline: {len(union)} test files unmutated ...", flush=True)
        status, seconds, out = _pytest(copy, union, args.timeout * 2)
        if status != "pass":
            print(out[-4000:])
            print(f"baseline {status} after {seconds:.1f} s: fix the tests first", file=sys.stderr)
            return 2
        print(f"baseline passes ({seconds:.1f} s)", flush=True)

        for m in mutants:
            path = copy / m.file
            original = path.read_text()
            tests = _tests_for(m, args.without_new)
            if original.count(m.original) != 1:
                rows.append((m.name, "stale", 0.0, f"snippet found {original.count(m.original)}x"))
                continue
            if not tests:
                rows.append((m.name, "no tests", 0.0, ""))
                continue
            try:
                path.write_text(original.replace(m.original, m.mutated))
                status, seconds, out = _pytest(copy, tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = {"fail": "killed", "pass": "SURVIVED", "timeout": "killed (timeout)"}.get(
                status, status
            )
            rows.append((m.name, verdict, seconds, _first_failure(out)))
            print(f"{m.name:40} {verdict:16} {seconds:6.1f} s", flush=True)
            if args.v and status == "pass":
                print(out[-2000:])

    after = _tree_fingerprint({m.file for m in mutants})
    print()
    print(f"| {'mutant':40} | {'result':16} | {'s':>6} | first failing test")
    print(f"|{'-' * 42}|{'-' * 18}|{'-' * 8}|{'-' * 20}")
    for name, verdict, seconds, first in rows:
        print(f"| {name:40} | {verdict:16} | {seconds:6.1f} | {first}")
    killed = sum(r[1].startswith("killed") for r in rows)
    print(f"\n{killed} of {len(rows)} mutants killed")
    if after != before:
        print("ERROR: the worktree changed while mutating", file=sys.stderr)
        return 2
    if any(r[1] in ("stale", "no tests") or r[1].startswith("error") for r in rows):
        return 2
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
