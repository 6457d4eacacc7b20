"""``python -m pcdemo``: run the demo's scenarios (see :mod:`pcdemo.scenarios`)."""

import sys

from pcdemo.scenarios import main

sys.exit(main())
