# Runs every check_* in checks.py and prints one line per check: "PASS name" or
# "FAIL name: error". Used under `micropython` by test_pure.py:
#   micropython run_checks.py PATH/o2core/vectors.json
import gc
import sys

import checks

checks.VECTORS_FILE = sys.argv[1]

for name in sorted(dir(checks)):
    if not name.startswith("check_"):
        continue
    gc.collect()  # each check starts from a collected heap, as the board's loop does
    try:
        getattr(checks, name)()
        print("PASS", name)
    except Exception as e:
        print("FAIL %s: %s %s" % (name, type(e).__name__, e))
