"""``python -m kvapp``: the same as the ``kvapp`` command."""

import sys

from kvapp.cli import main

sys.exit(main())
