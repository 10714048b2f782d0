"""WiFi station management and SNTP: the only code besides MQTT that touches the network.

``Wifi.up`` is set while associated with an IP address; the MQTT client waits on it. Neither
ever blocks the event loop: WiFi is polled, SNTP is a non-blocking UDP query polled from
asyncio (``ntptime.settime`` would block up to its 1 s socket timeout, and DNS lookups block on
the ESP32 -- configure ``ntp.host`` and ``mqtt.host`` as IP addresses on site).
"""

import asyncio
import socket
import struct

from micropython import const

_CONNECT_WAIT_MS = const(15000)
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_NTP_RETRY_MS = const(30000)
_NTP_RESYNC_MS = const(3600000)  # the ESP32 RTC drifts by seconds per day
_NTP_TIMEOUT_MS = const(2000)
_NTP_TO_UNIX_S = const(2208988800)  # 1900-01-01 to 1970-01-01 (RFC 5905)
SNTP_REQUEST = b"\x23" + bytes(47)  # LI 0, version 4, mode 3 (client)


class Wifi:
    """``wlan`` is a ``network.WLAN(network.STA_IF)`` (passed in). ``drops`` counts losses."""

    def __init__(self, wlan, ssid: str, password: str) -> None:
        self._wlan = wlan
        self._ssid = ssid
        self._password = password
        self.up = asyncio.Event()
        self.drops = 0

    def rssi_dbm(self):
        try:
            return self._wlan.status("rssi")
        except Exception:  # noqa: BLE001 -- not associated, or a port without RSSI
            return None

    async def run(self) -> None:
        """Keep the station connected forever, backing off between failed attempts."""
        backoff_ms = _BACKOFF_MIN_MS
        self._wlan.active(True)
        while True:
            if self._wlan.isconnected():
                if not self.up.is_set():
                    print("wifi: up", self._wlan.ifconfig()[0])
                    self.up.set()
                backoff_ms = _BACKOFF_MIN_MS
                await asyncio.sleep_ms(250)
                continue
            if self.up.is_set():
                print("wifi: down")
                self.drops += 1
                self.up.clear()
            try:
                self._wlan.connect(self._ssid, self._password)
            except OSError as e:
                print("wifi: connect failed: %r" % (e,))
            waited = 0
            while not self._wlan.isconnected() and waited < _CONNECT_WAIT_MS:
                await asyncio.sleep_ms(250)
                waited += 250
            if not self._wlan.isconnected():
                print("wifi: no link, retry in %d ms" % backoff_ms)
                await asyncio.sleep_ms(backoff_ms)
                backoff_ms = min(backoff_ms * 2, _BACKOFF_MAX_MS)


def sntp_unix_ms(reply) -> int:
    """Unix ms from a 48-byte SNTP reply (transmit timestamp, RFC 5905 section 7.3).

    Raises ValueError on a short reply, a wrong mode or an unsynchronised server (stratum 0).
    """
    if len(reply) < 48 or reply[0] & 0x07 not in (4, 5) or reply[1] == 0:
        raise ValueError("bad SNTP reply")
    secs, frac = struct.unpack_from("!II", reply, 40)
    return (secs - _NTP_TO_UNIX_S) * 1000 + (frac * 1000 >> 32)


async def sntp_query(host: str, port: int = 123, timeout_ms: int = _NTP_TIMEOUT_MS) -> int:
    """One SNTP query without blocking the loop; Unix ms. Raises OSError / ValueError."""
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.sendto(SNTP_REQUEST, addr)
        waited = 0
        while True:
            try:
                reply = s.recv(48)
                break
            except OSError:  # EAGAIN: nothing yet
                if waited >= timeout_ms:
                    raise OSError("SNTP timeout")
                await asyncio.sleep_ms(20)
                waited += 20
        return sntp_unix_ms(reply)
    finally:
        s.close()


async def keep_time(wifi: Wifi, clock, host: str, port: int = 123) -> None:
    """Set ``clock`` from SNTP when WiFi is up, hourly; retry every 30 s after a failure."""
    while True:
        await wifi.up.wait()
        try:
            ms = await sntp_query(host, port)
            first = not clock.synced
            clock.set_unix_ms(ms)
            if first:
                print("ntp: clock set from %s" % host)
            await asyncio.sleep_ms(_NTP_RESYNC_MS)
        except Exception as e:  # noqa: BLE001 -- OSError, timeout, bad reply: later
            print("ntp: failed: %r" % (e,))
            await asyncio.sleep_ms(_NTP_RETRY_MS)
