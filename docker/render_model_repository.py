"""Render the image's model repository into a writable copy with deployment overrides.

The image carries ``model_repository/`` exactly as the tests serve it (read-only, under
``/opt/moonpipe/model_repository``). At start the entrypoint calls this script to copy it
to ``$MOONPIPE_RUNTIME_DIR/model_repository`` and rewrite ``config.pbtxt`` parameters:

- every environment variable ``MOONPIPE_PARAM_<name>=<value>`` sets the string parameter
  ``<name>`` of every model (``MOONPIPE_PARAM_max_batch_size=16``);
- an ``EXECUTION_ENV_PATH`` parameter, if the repository has one (it may point at the
  developer's ``.venv``), is pointed at the image's environment (``--env-path``).

The work is :mod:`moonpipe.repository`'s, the same code as ``moonpipe serve --param``
(the image's venv has moonpipe installed). Usage:
``python render_model_repository.py SRC DST [--env-path DIR]``; prints what it set.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from moonpipe.repository import (
    ENV_PATH_PARAMETER,
    PARAM_ENV_PREFIX,
    has_parameter,
    overrides_from_env,
    render,
    set_parameter,
)

__all__ = ["PARAM_ENV_PREFIX", "has_parameter", "main", "overrides_from_env", "render", "set_parameter"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("src", type=Path, help="model repository to copy (read-only is fine)")
    parser.add_argument("dst", type=Path, help="where to write the rendered copy")
    parser.add_argument("--env-path", default=None,
                        help=f"value for an existing {ENV_PATH_PARAMETER} parameter (default: leave it)")
    args = parser.parse_args(argv)
    try:
        changes = render(args.src, args.dst, overrides_from_env(os.environ), args.env_path)
    except (OSError, ValueError) as exc:
        print(f"render_model_repository: {exc}", file=sys.stderr)
        return 1
    for line in changes:
        print(f"render_model_repository: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
