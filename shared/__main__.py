"""``python -m shared <action>``: the operator's door into the engine."""

import gc
import sys

# The collector at the process's two edges (docs/performance.md, *The collector at the CLI's
# start and exit*): the imports make tens of thousands of objects that live as long as the
# process, which it would scan every 700 allocations while they are made (a run freezes them
# anyway: shared/common/collector.py); and at exit the interpreter's last collection would scan
# every object left, which the process's end frees anyway. The run has closed what it opened.
gc.disable()
try:
    from .cli import main
finally:
    gc.enable()

status = main()
gc.freeze()
sys.exit(status)
