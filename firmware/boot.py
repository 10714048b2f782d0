# Runs first at every reset. Keep it tiny: the application starts from main.py.
import gc

try:
    import esp  # ESP32 only: silence the vendor debug output on UART0 (the REPL).

    esp.osdebug(None)
except ImportError:
    pass
gc.collect()
