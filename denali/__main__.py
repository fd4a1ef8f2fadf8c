"""``python -m denali``: the same as the ``denali`` command."""

import sys

from denali.cli import main

sys.exit(main())
