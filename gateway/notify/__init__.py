"""Alarm notifications: WeCom / DingTalk robots, webhooks, e-mail and SMS (gateway/README.md,
"Notifications").

- :mod:`gateway.notify.queue`: the durable queue, written in the alarm event's transaction;
- :mod:`gateway.notify.messages`: what a message says (Chinese and English catalogue);
- :mod:`gateway.notify.targets`: delivery per kind of target;
- :mod:`gateway.notify.worker`: one delivery thread per target, off the ingest's path.
"""

from gateway.notify.queue import NotifyQueue
from gateway.notify.worker import Notifier

__all__ = ["Notifier", "NotifyQueue"]
