"""``python -m kvapp.ctl``."""

import sys

from kvapp.ctl.app import main

sys.exit(main())
