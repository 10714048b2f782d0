# Board entry point: everything lives in /lib/o2 (compiled .mpy).
from o2 import app

app.main()
