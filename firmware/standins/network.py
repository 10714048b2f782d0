# Stand-in for the ESP32 `network` module (test only): a station whose link follows
# sim.json {"wifi": true|false} (the runner's set_wifi), so tests can simulate WiFi loss.
import json

STA_IF = 0


class WLAN:
    def __init__(self, n=STA_IF):
        self._on = False
        self._wanted = False

    def active(self, on=None):
        if on is None:
            return self._on
        self._on = bool(on)

    def connect(self, *a):
        self._wanted = True

    def isconnected(self):
        if not (self._on and self._wanted):
            return False
        try:
            with open("/standins/sim.json") as f:
                return json.load(f).get("wifi", True)
        except (OSError, ValueError):
            return True

    def status(self, what=None):
        if what == "rssi":
            if not self.isconnected():
                raise OSError(-1)
            return -55
        return 1010  # STAT_GOT_IP

    def ifconfig(self):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
