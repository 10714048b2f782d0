"""WiFi station management and NTP: the only code besides MQTT that touches the network.

``Wifi.up`` is set while associated with an IP address; the MQTT client waits on it.
"""

import asyncio

CONNECT_WAIT_MS = 15000
BACKOFF_MAX_MS = 60000
NTP_RETRY_MS = 30000
NTP_RESYNC_MS = 3600000  # the ESP32 RTC drifts by seconds per day


class Wifi:
    """``wlan`` is a ``network.WLAN(network.STA_IF)`` (passed in)."""

    def __init__(self, wlan, ssid: str, password: str) -> None:
        self._wlan = wlan
        self._ssid = ssid
        self._password = password
        self.up = asyncio.Event()

    def rssi_dbm(self):
        try:
            return self._wlan.status("rssi")
        except Exception:  # noqa: BLE001 -- not associated, or a port without RSSI
            return None

    async def run(self) -> None:
        """Keep the station connected forever, backing off between failed attempts."""
        backoff_ms = 1000
        self._wlan.active(True)
        while True:
            if self._wlan.isconnected():
                if not self.up.is_set():
                    print("wifi: up", self._wlan.ifconfig()[0])
                    self.up.set()
                backoff_ms = 1000
                await asyncio.sleep_ms(1000)
                continue
            if self.up.is_set():
                print("wifi: down")
                self.up.clear()
            try:
                self._wlan.connect(self._ssid, self._password)
            except OSError as e:
                print("wifi: connect failed: %r" % (e,))
            waited = 0
            while not self._wlan.isconnected() and waited < CONNECT_WAIT_MS:
                await asyncio.sleep_ms(250)
                waited += 250
            if not self._wlan.isconnected():
                await asyncio.sleep_ms(backoff_ms)
                backoff_ms = min(backoff_ms * 2, BACKOFF_MAX_MS)


async def keep_time(wifi: Wifi, clock, settime) -> None:
    """Set the RTC from NTP when WiFi is up; ``settime`` is ``ntptime.settime``.

    ntptime blocks for up to its 1 s socket timeout: acceptable once an hour for this slice;
    an async SNTP query belongs here later so that the alarm loop is never held up.
    """
    while True:
        await wifi.up.wait()
        try:
            settime()
            if not clock.synced:
                print("ntp: clock set")
            clock.synced = True
            await asyncio.sleep_ms(NTP_RESYNC_MS)
        except Exception as e:  # noqa: BLE001 -- OSError or timeout: try again later
            print("ntp: failed: %r" % (e,))
            await asyncio.sleep_ms(NTP_RETRY_MS)
