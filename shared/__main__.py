"""``python -m shared <action>``: the operator's door into the engine."""

import sys

from .cli import main

sys.exit(main())
