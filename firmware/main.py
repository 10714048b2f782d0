# Board entry point: everything lives in /lib/o2 (compiled .mpy). Start-up runs in phases
# so that code needed only once (config schema, wiring) leaves the heap before the board runs.
from o2 import start

ready = start.prepare()
del start
if ready is not None:
    from o2 import app

    app.run(ready)
