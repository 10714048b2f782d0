"""Small asyncio MQTT 3.1.1 client owned by the board's network layer.

Why our own: the frozen umqtt blocks (connect without timeout, QoS 1 publish against a frozen
broker) and would stall the sensing side and trip the watchdog (measured on the unix port).

Model: ``run()`` keeps one connection alive forever (connect with timeout, keepalive ping,
reconnect with exponential backoff). ``up`` is set while connected. ``publish()`` never waits
for the broker's PUBACK: QoS 1 acknowledgements arrive through the ``on_ack`` callback given
per message, so the caller (the outbox) releases a reading only once the broker has it.
When the connection drops, messages not yet acknowledged are forgotten here and ``on_down``
tells the owner to send them again (clean session: the broker forgot them too).
"""

import asyncio
import time

from micropython import const

from o2core import mqtt_codec as codec

_BACKOFF_MIN_MS = const(500)
_BACKOFF_MAX_MS = const(30000)


async def _connected() -> None:
    pass


def _down() -> None:
    pass


def _message(topic: bytes, payload: bytes, retain: bool) -> None:
    pass


class MQTTClient:
    """``will`` is ``(topic, payload, qos, retain)`` or None. Times in seconds unless _ms."""

    def __init__(
        self,
        client_id,
        host: str,
        port: int = 1883,
        keepalive_s: int = 30,
        username=None,
        password=None,
        will=None,
        connect_timeout_s: float = 10,
        ssl=None,
        server_hostname=None,
        backoff_max_s: float = _BACKOFF_MAX_MS / 1000,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.username = username
        self.password = password
        self.will = will
        self.connect_timeout_s = connect_timeout_s
        self.ssl = ssl  # an ssl.SSLContext with the pinned CA loaded, or None (plain TCP)
        self.server_hostname = server_hostname or host
        self.backoff_max_ms = int(backoff_max_s * 1000)
        self.up = asyncio.Event()
        self.on_connect = _connected  # async callable(): birth messages, subscriptions
        self.on_down = _down  # callable(): connection lost, in-flight messages dropped
        self.on_message = _message  # callable(topic, payload, retain) for subscribed topics
        self.connects = 0  # successful connections since boot (health)
        self._reader = None
        self._writer = None
        self._dead = asyncio.Event()
        self._mid = 0
        self._inflight: dict = {}  # mid -> on_ack callable or None
        self._last_rx = time.ticks_ms()
        self._last_tx = time.ticks_ms()
        self._link = None  # the WiFi "up" Event given to run()

    @property
    def inflight(self) -> int:
        """QoS 1 messages sent and not yet acknowledged on this connection."""
        return len(self._inflight)

    def next_mid(self) -> int:
        """A fresh message id 1..65535 (0 is not a valid id)."""
        self._mid = self._mid % 65535 + 1
        return self._mid

    async def run(self, link_up=None) -> None:
        """Stay connected forever. ``link_up``: an Event that is set while WiFi is up."""
        backoff_ms = _BACKOFF_MIN_MS
        self._link = link_up
        while True:
            if link_up is not None:
                await link_up.wait()
            try:
                await self._connect()
            except Exception as e:  # noqa: BLE001 -- any failure means: back off, retry
                self._close()
                print("mqtt: connect to %s:%d failed: %r" % (self.host, self.port, e))
                await asyncio.sleep_ms(backoff_ms)
                backoff_ms = min(backoff_ms * 2, self.backoff_max_ms)
                continue
            backoff_ms = _BACKOFF_MIN_MS
            self.connects += 1
            self._dead.clear()
            reader = asyncio.create_task(self._read_loop())
            pinger = asyncio.create_task(self._keepalive_loop())
            self.up.set()
            try:
                await self.on_connect()
            except Exception as e:  # noqa: BLE001
                print("mqtt: on_connect failed: %r" % (e,))
                self._dead.set()
            await self._dead.wait()
            self.up.clear()
            reader.cancel()
            pinger.cancel()
            self._close()
            self._inflight = {}
            print("mqtt: connection lost")
            self.on_down()
            await asyncio.sleep_ms(_BACKOFF_MIN_MS)

    async def publish(
        self, topic, payload, qos: int = 0, retain: bool = False, mid: int = 0, on_ack=None
    ) -> int:
        """Send one PUBLISH (one write call); returns its message id (0 for QoS 0).

        For QoS 1, ``on_ack(mid)`` is called when the PUBACK arrives. Raises OSError when not
        connected or when the socket fails.
        """
        if qos and not mid:
            mid = self.next_mid()
        packet = codec.publish(topic, payload, qos, retain, mid)
        if qos:
            self._inflight[mid] = on_ack
        await self._send(packet)
        return mid

    async def send_packet(self, packet, mid: int = 0, on_ack=None) -> None:
        """Send a complete prebuilt packet (e.g. from ``codec.publish_header_into``) in one
        write; a QoS 1 ``mid`` is tracked like ``publish``. Raises OSError if not connected."""
        if mid:
            self._inflight[mid] = on_ack
        await self._send(packet)

    def abort(self) -> None:
        """Give up on this connection (e.g. a PUBACK never came): run() reconnects."""
        self._dead.set()

    async def subscribe(self, topic, qos: int = 1) -> None:
        """Send a SUBSCRIBE; the SUBACK is not awaited (messages arrive via on_message)."""
        await self._send(codec.subscribe(self.next_mid(), [(topic, qos)]))

    def close(self, last_packets=()) -> None:
        """Best-effort synchronous shutdown: send ``last_packets`` then DISCONNECT, close.

        Synchronous because it runs after KeyboardInterrupt has stopped the event loop.
        """
        writer = self._writer
        if writer is not None:
            for packet in tuple(last_packets) + (codec.DISCONNECT_PACKET,):
                try:
                    writer.write(packet)  # non-blocking socket: small packets go out at once
                except Exception:  # noqa: BLE001
                    break
        self._close()
        self.up.clear()

    async def _connect(self) -> None:
        if self.ssl is not None:
            opening = asyncio.open_connection(
                self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
            )
        else:
            opening = asyncio.open_connection(self.host, self.port)
        streams: tuple = await asyncio.wait_for(opening, self.connect_timeout_s)
        self._reader, self._writer = streams
        will = self.will
        packet = codec.connect(
            self.client_id,
            self.keepalive_s,
            True,
            will[0] if will else None,
            will[1] if will else b"",
            will[2] if will else 0,
            will[3] if will else False,
            self.username,
            self.password,
        )
        await self._send(packet)
        packet_in: tuple = await asyncio.wait_for(self._read_packet(), self.connect_timeout_s)
        first, body = packet_in
        if first != codec.CONNACK:
            raise codec.MQTTError("expected CONNACK, got 0x%02x" % first)
        _, rc = codec.parse_connack(body)
        if rc:
            msg = codec.CONNACK_MESSAGES[rc] if rc < len(codec.CONNACK_MESSAGES) else str(rc)
            raise codec.MQTTError("broker refused: " + msg)

    async def _send(self, packet) -> None:
        writer = self._writer
        if writer is None:
            raise OSError("not connected")
        writer.write(packet)
        await writer.drain()
        self._last_tx = time.ticks_ms()

    async def _read_packet(self):
        reader = self._reader
        if reader is None:
            raise OSError("not connected")
        first = (await reader.readexactly(1))[0]
        # The remaining length: up to 4 bytes, the last one without its top bit (decoded by
        # the codec, which raises on a fifth).
        size = bytearray(4)
        for i in range(4):
            size[i] = (await reader.readexactly(1))[0]
            if not size[i] & 0x80:
                break
        n = codec.read_varint(size)[0]
        body = await reader.readexactly(n) if n else b""
        self._last_rx = time.ticks_ms()
        return first, body

    async def _read_loop(self) -> None:
        try:
            while True:
                first, body = await self._read_packet()
                kind = first & 0xF0
                if kind == codec.PUBACK:
                    mid = codec.parse_mid(body)
                    if mid in self._inflight:
                        on_ack = self._inflight.pop(mid)
                        if on_ack is not None:
                            on_ack(mid)
                elif kind == codec.PUBLISH:
                    topic, payload, qos, retain, mid, _ = codec.parse_publish(first, body)
                    if qos:
                        await self._send(codec.puback(mid))
                    # RETAIN set = a stored message replayed because we (re)subscribed, not
                    # one sent now (MQTT 3.1.1, 3.3.1.3): the owner decides (commands: ignored).
                    self.on_message(topic, payload, retain)
                # PINGRESP and SUBACK need nothing beyond updating _last_rx.
        except Exception as e:  # noqa: BLE001 -- EOF, reset, malformed: all mean reconnect
            print("mqtt: read failed: %r" % (e,))
        self._dead.set()

    async def _keepalive_loop(self) -> None:
        # Ping at half the keep-alive so the broker never times us out; declare the broker
        # dead when nothing (not even a PINGRESP) came back for a whole keep-alive period --
        # this is what detects a frozen broker, whose TCP socket stays open.
        keepalive_ms = self.keepalive_s * 1000
        self._last_rx = time.ticks_ms()
        try:
            while True:
                await asyncio.sleep_ms(min(1000, keepalive_ms // 4))
                now = time.ticks_ms()
                if self._link is not None and not self._link.is_set():
                    print("mqtt: link down")  # WiFi lost: the socket is dead, don't wait
                    break
                if time.ticks_diff(now, self._last_rx) > keepalive_ms:
                    print("mqtt: no reply for %d s" % self.keepalive_s)
                    break
                if time.ticks_diff(now, self._last_tx) >= keepalive_ms // 2:
                    await self._send(codec.PINGREQ_PACKET)
        except Exception as e:  # noqa: BLE001
            print("mqtt: keepalive failed: %r" % (e,))
        self._dead.set()

    def _close(self) -> None:
        writer = self._writer
        self._writer = None
        self._reader = None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
