"""``python -m moonpipe_gateway``: the same as ``moonpipe-gateway``."""

from __future__ import annotations

import sys

from moonpipe_gateway.cli import main

sys.exit(main())
