"""Store-and-forward: a bounded flash spool of CRC-checked records with a RAM ring in front.

Every reading is appended to flash the moment it is measured (so a power loss loses nothing
that was measured), and kept in a small RAM ring so that the sender normally publishes it
without reading flash back. The sender takes batches from the *cursor* (the oldest reading the
broker has not acknowledged) and moves the cursor only after the PUBACK (``release``).

Flash layout (one directory, ``/spool`` on the board):

- segment files named by an 8-digit hex id (``0000002a``), append-only, at most
  ``segment_bytes`` each; a new segment is started when the current one is full (rotation
  spreads wear; LittleFS levels the rest);
- at most ``max_segments`` segments: starting one more deletes the oldest (drop-oldest policy,
  the unacknowledged readings in it are counted in ``dropped``);
- ``cursor``: ``"<seg> <offset> <crc>"``, replaced by write-then-rename after each release;
  a missing or corrupt cursor means "from the oldest segment" (duplicates, never a loss --
  the gateway drops duplicates on (boot, seq)).

Record format (pure functions below, common subset, tested under CPython and micropython)::

    A5 5A | len: u16 LE | crc32: u32 LE over (len bytes + payload) | payload (len bytes)

Written with a single ``write`` from a preallocated buffer. A power loss mid-write leaves a
*torn* tail (short header, short payload or wrong CRC): ``open()`` stops the segment there,
counts it in ``torn`` and starts a new segment for the next append, so nothing is ever appended
after garbage. A bad record in the middle of a segment (flash corruption) ends that segment
(counted in ``corrupt``).
"""

import os
from binascii import crc32

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_MAGIC = const(b"\xa5\x5a")
HEADER_LEN = 8
MAX_RECORD = 512  # bytes of payload; a telemetry reading is ~220
_CURSOR = const("cursor")
_RAM_RING = const(4)  # newest readings kept in RAM for sending without a flash read


class SpoolError(ValueError):
    """A record that does not fit, or a bad spool configuration."""


# -- record format (pure) --------------------------------------------------------------------


def encode_record(buf, payload) -> int:
    """Write header + ``payload`` into ``buf`` (>= HEADER_LEN + len); returns the record size.

    Raises SpoolError if the payload is empty or longer than MAX_RECORD.
    """
    n = len(payload)
    if n == 0 or n > MAX_RECORD:
        raise SpoolError("record of %d bytes (1..%d)" % (n, MAX_RECORD))
    buf[0] = 0xA5
    buf[1] = 0x5A
    buf[2] = n & 0xFF
    buf[3] = n >> 8
    buf[HEADER_LEN : HEADER_LEN + n] = payload
    crc = crc32(memoryview(buf)[HEADER_LEN : HEADER_LEN + n], crc32(memoryview(buf)[2:4]))
    buf[4] = crc & 0xFF
    buf[5] = (crc >> 8) & 0xFF
    buf[6] = (crc >> 16) & 0xFF
    buf[7] = (crc >> 24) & 0xFF
    return HEADER_LEN + n


def header_length(hdr) -> int:
    """Payload length announced by an 8-byte header, or -1 if it is not a record header."""
    if len(hdr) < HEADER_LEN or hdr[0] != 0xA5 or hdr[1] != 0x5A:
        return -1
    n = hdr[2] | (hdr[3] << 8)
    if n == 0 or n > MAX_RECORD:
        return -1
    return n


def record_ok(hdr, payload) -> bool:
    """True if ``payload`` matches the CRC in ``hdr`` (header already passed header_length)."""
    crc = hdr[4] | (hdr[5] << 8) | (hdr[6] << 16) | (hdr[7] << 24)
    return crc32(payload, crc32(memoryview(hdr)[2:4])) & 0xFFFFFFFF == crc


def parse_records(data) -> tuple:
    """``(payloads, end, status)`` of a whole segment image (used by tests and tools).

    ``end`` is the offset after the last valid record; ``status`` is "ok", "torn" (the data
    ends inside a record) or "corrupt" (a bad record with more data after it).
    """
    out: list = []
    pos = 0
    mv = memoryview(data)
    while pos < len(data):
        n = header_length(mv[pos : pos + HEADER_LEN])
        if n < 0:
            return out, pos, "torn" if len(data) - pos < HEADER_LEN else "corrupt"
        end = pos + HEADER_LEN + n
        if end > len(data):
            return out, pos, "torn"
        if not record_ok(mv[pos : pos + HEADER_LEN], mv[pos + HEADER_LEN : end]):
            return out, pos, "torn" if end == len(data) else "corrupt"
        out.append(bytes(mv[pos + HEADER_LEN : end]))
        pos = end
    return out, pos, "ok"


def cursor_text(seg: int, off: int) -> str:
    body = "%d %d" % (seg, off)
    return "%s %d\n" % (body, crc32(body.encode()) & 0xFFFFFFFF)


def parse_cursor(text):
    """``(seg, off)`` from the cursor file text, or None if it is damaged."""
    parts = text.split()
    if len(parts) != 3:
        return None
    try:
        seg, off, crc = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if crc32(("%d %d" % (seg, off)).encode()) & 0xFFFFFFFF != crc or seg < 0 or off < 0:
        return None
    return seg, off


def seg_name(seg: int) -> str:
    return "%08x" % seg


def _is_seg_name(name: str) -> bool:
    if len(name) != 8:
        return False
    for c in name:
        if c not in "0123456789abcdef":
            return False
    return True


# -- the spool (file I/O) ----------------------------------------------------------------------


class Spool:
    """Bounded append-only spool in directory ``path``; call ``open()`` once before use.

    Counters since boot: ``dropped`` (unsent readings deleted by drop-oldest), ``torn``
    (torn tails found at open), ``corrupt``, ``errors`` (flash write failures), ``appended``.
    """

    def __init__(self, path: str, segment_bytes: int = 16384, max_segments: int = 32) -> None:
        if max_segments < 2 or segment_bytes < HEADER_LEN + MAX_RECORD:
            raise SpoolError("spool of %d x %d bytes" % (max_segments, segment_bytes))
        self.path = path
        self.segment_bytes = segment_bytes
        self.max_segments = max_segments
        self._segs: list = []  # segment ids, oldest first; segs[0] holds the cursor
        self._counts: list = []  # valid records per segment
        self._sizes: list = []  # bytes of valid records per segment
        self._sealed = True  # the newest segment takes no more appends (torn tail / none)
        self._cseg = 0
        self._coff = 0
        self._cidx = 0  # records before the cursor in segs[0]
        self._peek = (0, 0, 0, 0)  # (seg, off, idx, records) after the last peek_batch
        self._rec = bytearray(HEADER_LEN + MAX_RECORD)  # one record, reused for every I/O
        self._rmv = memoryview(self._rec)
        self._ring_seg = [-1] * _RAM_RING
        self._ring_off = [0] * _RAM_RING
        self._ring_pay: list = [None] * _RAM_RING
        self._ring_next = 0
        self.dropped = 0
        self.torn = 0
        self.corrupt = 0
        self.errors = 0
        self.appended = 0
        self.ram_hits = 0
        self.batch_begin = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Readings not yet acknowledged (in flash)."""
        total = 0
        for c in self._counts:
            total += c
        return total - self._cidx

    @property
    def segments(self) -> int:
        return len(self._segs)

    def _file(self, seg: int) -> str:
        return "%s/%s" % (self.path, seg_name(seg))

    # -- open: scan and validate -----------------------------------------------------------

    def open(self) -> None:
        """Scan the directory: validate every segment, find torn tails, load the cursor."""
        try:
            os.mkdir(self.path)
        except OSError:
            pass  # exists
        ids = []
        for name in os.listdir(self.path):
            if _is_seg_name(name):
                ids.append(int(name, 16))
        ids.sort()
        cur = None
        try:
            with open("%s/%s" % (self.path, _CURSOR)) as f:
                cur = parse_cursor(f.read())
        except OSError:
            pass
        # Segments before the cursor were fully delivered (a crash came before their delete).
        while cur is not None and ids and ids[0] < cur[0]:
            self._remove(ids.pop(0))
        self._segs = []
        self._counts = []
        self._sizes = []
        for seg in ids:
            count, size, status = self._scan(seg)
            if status == "torn":
                self.torn += 1
            elif status == "corrupt":
                self.corrupt += 1
            self._segs.append(seg)
            self._counts.append(count)
            self._sizes.append(size)
            last_status = status
        # Never append after a torn or corrupt tail: the next append opens a new segment.
        self._sealed = not ids or last_status != "ok"
        self._cseg = ids[0] if ids else (cur[0] if cur is not None else 0)
        self._coff = 0
        self._cidx = 0
        if cur is not None and ids and cur[0] == ids[0]:
            self._seek_cursor(cur[1])

    def _scan(self, seg: int) -> tuple:
        # Returns (records, valid bytes, "ok" | "torn" | "corrupt").
        count = 0
        pos = 0
        rec = self._rec
        mv = self._rmv
        with open(self._file(seg), "rb") as f:
            while True:
                got = f.readinto(mv[:HEADER_LEN])
                if not got:
                    return count, pos, "ok"
                n = header_length(rec) if got == HEADER_LEN else -1
                if n < 0:
                    return count, pos, "torn" if got < HEADER_LEN else "corrupt"
                got = f.readinto(mv[HEADER_LEN : HEADER_LEN + n])
                if got != n:
                    return count, pos, "torn"
                if not record_ok(mv[:HEADER_LEN], mv[HEADER_LEN : HEADER_LEN + n]):
                    more = f.read(1)
                    return count, pos, "corrupt" if more else "torn"
                count += 1
                pos += HEADER_LEN + n

    def _seek_cursor(self, off: int) -> None:
        # Place the cursor at ``off`` in segs[0], counting the records before it.
        pos = 0
        idx = 0
        size = self._sizes[0]
        if off >= size:
            pos, idx = size, self._counts[0]
        else:
            with open(self._file(self._segs[0]), "rb") as f:
                while pos < off:
                    f.readinto(self._rmv[:HEADER_LEN])
                    n = header_length(self._rec)
                    f.seek(n, 1)
                    pos += HEADER_LEN + n
                    idx += 1
        self._coff = pos
        self._cidx = idx

    # -- append (sensing side) -------------------------------------------------------------

    def append(self, payload) -> None:
        """Persist one reading (raises SpoolError if it is too big; OSError is counted).

        Drops the oldest segment when the spool is full.
        """
        size = encode_record(self._rec, payload)
        if self._sealed or self._sizes[-1] + size > self.segment_bytes:
            self._rotate()
        seg = self._segs[-1]
        off = self._sizes[-1]
        try:
            with open(self._file(seg), "ab") as f:
                f.write(self._rmv[:size])
        except OSError as e:
            self.errors += 1
            self._sealed = True  # whatever reached the file is a torn tail now
            print("spool: write failed: %r" % (e,))
            return
        self._sizes[-1] = off + size
        self._counts[-1] += 1
        self.appended += 1
        i = self._ring_next
        self._ring_seg[i] = seg
        self._ring_off[i] = off
        self._ring_pay[i] = payload
        self._ring_next = (i + 1) % _RAM_RING

    def _rotate(self) -> None:
        new = self._segs[-1] + 1 if self._segs else self._cseg + 1
        while len(self._segs) >= self.max_segments:
            self._drop_oldest()
        self._segs.append(new)
        self._counts.append(0)
        self._sizes.append(0)
        self._sealed = False
        if len(self._segs) == 1:
            self._cseg, self._coff, self._cidx = new, 0, 0

    def _drop_oldest(self) -> None:
        seg = self._segs.pop(0)
        lost = self._counts.pop(0) - self._cidx
        self._sizes.pop(0)
        self.dropped += lost
        self._remove(seg)
        self._cseg = self._segs[0] if self._segs else seg + 1
        self._coff = 0
        self._cidx = 0
        print("spool: full, dropped %d oldest readings" % lost)

    def _remove(self, seg: int) -> None:
        try:
            os.remove(self._file(seg))
        except OSError:
            pass

    # -- drain (network side) --------------------------------------------------------------

    def peek_batch(self, out, start: int, max_records: int) -> int:
        """Copy the oldest unacknowledged readings into ``out[start:]`` as one JSON text.

        One reading is written as itself, several as a JSON array ``[r1,r2,...]``; at most
        ``max_records`` and what fits in ``out``. Returns the end offset in ``out``; the text
        begins at ``batch_begin`` (``start``, or ``start + 1`` for a single reading); 0
        readings: returns ``start``. ``release()`` then acknowledges exactly these readings.
        """
        pos = start + 1  # room for "["
        n = 0
        limit = len(out) - 1  # room for "]"
        si = 0
        off = self._coff
        idx = self._cidx
        f = None
        open_seg = -1
        try:
            while n < max_records and si < len(self._segs):
                seg = self._segs[si]
                if off >= self._sizes[si]:
                    si += 1
                    off = 0
                    idx = 0
                    continue
                payload = self._ring_get(seg, off)
                if payload is not None:
                    plen = len(payload)
                    rlen = HEADER_LEN + plen
                else:
                    if open_seg != seg:
                        if f is not None:
                            f.close()
                        f = open(self._file(seg), "rb")
                        open_seg = seg
                    if f is None:
                        break
                    f.seek(off)
                    f.readinto(self._rmv[:HEADER_LEN])
                    plen = header_length(self._rec)
                    if plen < 0 or f.readinto(self._rmv[HEADER_LEN : HEADER_LEN + plen]) != plen:
                        self.corrupt += 1
                        self._sizes[si] = off  # the segment ends here
                        self._counts[si] = idx
                        if si == len(self._segs) - 1:
                            self._sealed = True
                        continue
                    rlen = HEADER_LEN + plen
                if pos + plen + 1 > limit:
                    break
                if n:
                    out[pos] = 0x2C  # ","
                    pos += 1
                if payload is not None:
                    out[pos : pos + plen] = payload
                    self.ram_hits += 1
                else:
                    out[pos : pos + plen] = self._rmv[HEADER_LEN : HEADER_LEN + plen]
                pos += plen
                n += 1
                off += rlen
                idx += 1
        finally:
            if f is not None:
                f.close()
        if n == 0:
            self._peek = (self._cseg, self._coff, self._cidx, 0)
            self.batch_begin = start
            return start
        if si >= len(self._segs):  # stopped at the very end: cursor = end of the newest
            si = len(self._segs) - 1
            off, idx = self._sizes[si], self._counts[si]
        self._peek = (self._segs[si], off, idx, n)
        if n == 1:
            self.batch_begin = start + 1
            return pos
        self.batch_begin = start
        out[start] = 0x5B  # "["
        out[pos] = 0x5D  # "]"
        return pos + 1

    @property
    def peeked(self) -> int:
        """Readings in the last peek_batch."""
        return self._peek[3]

    def release(self) -> int:
        """The broker acknowledged the last peek_batch: move the cursor past it, persist it.

        Returns the number of readings released. Safe if drop-oldest deleted some of them.
        """
        seg, off, idx, n = self._peek
        if n == 0:
            return 0
        self._peek = (seg, off, idx, 0)
        # Delete the segments that are now fully delivered (never the one being appended).
        while self._segs and self._segs[0] < seg:
            self._remove(self._segs.pop(0))
            self._counts.pop(0)
            self._sizes.pop(0)
        if not self._segs or self._segs[0] != seg:
            return n  # drop-oldest took the batch's segment meanwhile; cursor is already past
        self._cseg, self._coff, self._cidx = seg, off, idx
        if off >= self._sizes[0] and len(self._segs) > 1:
            self._remove(self._segs.pop(0))
            self._counts.pop(0)
            self._sizes.pop(0)
            self._cseg, self._coff, self._cidx = self._segs[0], 0, 0
        self._save_cursor()
        return n

    def _save_cursor(self) -> None:
        path = "%s/%s" % (self.path, _CURSOR)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(cursor_text(self._cseg, self._coff))
            os.rename(tmp, path)
        except OSError as e:
            self.errors += 1
            print("spool: cursor write failed: %r" % (e,))

    def _ring_get(self, seg: int, off: int):
        for i in range(_RAM_RING):
            if self._ring_off[i] == off and self._ring_seg[i] == seg:
                return self._ring_pay[i]
        return None

    # -- recovery helpers ------------------------------------------------------------------

    def last_boot(self) -> int:
        """The ``boot`` of the newest record in the spool (0 if none): boot-counter recovery."""
        for si in range(len(self._segs) - 1, -1, -1):
            if not self._counts[si]:
                continue
            last = b""
            with open(self._file(self._segs[si]), "rb") as f:
                pos = 0
                while pos < self._sizes[si]:
                    f.readinto(self._rmv[:HEADER_LEN])
                    n = header_length(self._rec)
                    last = f.read(n)
                    pos += HEADER_LEN + n
            return boot_of(last)
        return 0


def boot_of(payload) -> int:
    """The ``"boot":N`` value of a telemetry payload, 0 if absent (no JSON parse: no heap)."""
    key = b'"boot":'
    i = bytes(payload).find(key)
    if i < 0:
        return 0
    i += len(key)
    v = 0
    while i < len(payload) and 0x30 <= payload[i] <= 0x39:
        v = v * 10 + payload[i] - 0x30
        i += 1
    return v
