# Stand-in for the ESP32 `network` module (test only): a station whose link follows
# sim.json {"wifi": true|false} (the runner's set_wifi), so tests can simulate WiFi loss.
import json

STA_IF = 0
SIM_FILE = "/standins/sim.json"


def _link():
    try:
        with open(SIM_FILE) as f:
            return json.load(f).get("wifi", True)
    except (OSError, ValueError):
        return True


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self._active = False
        self._wanted = False

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)

    def connect(self, ssid=None, key=None, **kw):
        self._wanted = True

    def isconnected(self):
        return self._active and self._wanted and _link()

    def status(self, param=None):
        if param == "rssi":
            if not self.isconnected():
                raise OSError(-1)
            return -55
        return 1010  # STAT_GOT_IP

    def ifconfig(self, config=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
