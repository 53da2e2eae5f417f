"""``python -m moonpipe_client`` runs the CLI."""

from __future__ import annotations

import sys

from moonpipe_client.cli import main

sys.exit(main())
