"""Start-up, first phase: read and validate the config, guard against crash loops, open the
spool, count the boot. Loads none of the application: its config schema is dropped from the
heap before the application's modules load (main.py), so they fill its place instead of
fragmenting the heap around it.
"""

import gc
import sys

from micropython import const

from o2 import FW_VERSION, state

_SPOOL_DIR = const("/spool")
_SETTINGS_FILE = const("/settings.json")  # runtime changes from commands, laid over config.json
_BATCH_HEADROOM = const(128)  # PUBLISH header room in front of a batch (topic <= 100 bytes)


def forget(name: str) -> None:
    """Drop a module that is no longer needed from the heap (re-imported on demand)."""
    sys.modules.pop(name, None)
    pkg, _, attr = name.rpartition(".")
    if pkg in sys.modules and hasattr(sys.modules[pkg], attr):
        delattr(sys.modules[pkg], attr)
    gc.collect()


def prepare(config_path: str = "/config.json"):
    """``(cfg, boot, spool)`` for ``app.run``, or None after a config error or in safe mode
    (which run here, network only)."""
    gc.collect()
    print("heap free at start: %d" % gc.mem_free())
    # The send buffer is the largest long-lived block: taken first, on a clean heap, sized
    # for the default spool.batch_kb (app.run enlarges it if the config asks for more).
    batch = bytearray(_BATCH_HEADROOM + 2048)
    import asyncio

    from o2 import config

    raw = None
    try:
        raw = config.overlay(config.read(config_path), config.load_settings(_SETTINGS_FILE))
        cfg = config.validate(raw)
    except config.ConfigError as e:
        # No crash loop on a bad config: say why on the console and on the status topic.
        # The local alarm stays armed when its own part of the config is usable (the board
        # then runs without telemetry); otherwise the board is network only.
        print("config error:", e)
        cfg = config.salvage(raw)
        if cfg is None:
            print("local alarm off: its sensor or thresholds are unusable")
            net_cfg = config.network_only(raw)
            if net_cfg is not None:
                from o2.safemode import safe_mode

                asyncio.run(safe_mode(net_cfg, "config error: %s" % e))
            return None
        cfg["config_error"] = "config error: %s" % e
        print("local alarm armed; no telemetry until the config is fixed")
    print(config.describe(cfg))
    del config, raw
    forget("o2.config")  # ~20 KB of schema on a 64-bit port; commands re-import it
    resets = state.rapid_resets()
    if resets >= cfg["safe_mode_resets"]:
        print("safe mode: %d rapid resets in a row" % resets)
        from o2.safemode import safe_mode

        asyncio.run(safe_mode(cfg, "%d rapid resets" % resets))
        return None
    from o2.spool import Spool

    spool = Spool(_SPOOL_DIR, cfg["spool.segment_kb"] * 1024, cfg["spool.segments"])
    spool.open()
    boot = state.next_boot(recover=spool.last_boot)
    if boot.recovered:
        print("boot counter damaged: recovered from %s" % boot.recovered)
    print(
        "o2chain firmware %s boot %d, spool %d buffered %d torn"
        % (FW_VERSION, boot.number, spool.pending, spool.torn)
    )
    return cfg, boot, spool, batch
