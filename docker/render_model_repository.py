"""Render the image's model repository into a writable copy with deployment overrides.

The image carries ``model_repository/`` exactly as the tests serve it (read-only, under
``/opt/moonpipe/model_repository``). At start the entrypoint calls this module to copy it
to ``$MOONPIPE_RUNTIME_DIR/model_repository`` and rewrite ``config.pbtxt`` parameters:

- every environment variable ``MOONPIPE_PARAM_<name>=<value>`` sets the string parameter
  ``<name>`` of every model (``MOONPIPE_PARAM_max_batch_size=16``); names are the
  ``EngineConfig``/``AdapterConfig`` field names, which the adapter validates at load
  (an unknown name fails the load with its name, so a typo cannot pass silently);
- an ``EXECUTION_ENV_PATH`` parameter, if the repository has one (it may point at the
  developer's ``.venv``), is pointed at the image's environment (``--env-path``).

Only ``string_value`` parameters are touched, with a text edit of the protobuf text
format (the image has no protobuf package); a parameter that is not in the file yet is
appended as a new top-level ``parameters`` entry, which the text format allows.
Usage: ``python render_model_repository.py SRC DST [--env-path DIR]``; prints what it set.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PARAM_ENV_PREFIX = "MOONPIPE_PARAM_"
ENV_PATH_PARAMETER = "EXECUTION_ENV_PATH"


def overrides_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """``MOONPIPE_PARAM_<name>`` variables as ``{name: value}`` (names keep their case)."""
    return {
        key[len(PARAM_ENV_PREFIX):]: value
        for key, value in sorted(env.items())
        if key.startswith(PARAM_ENV_PREFIX) and len(key) > len(PARAM_ENV_PREFIX)
    }


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parameter_pattern(name: str) -> re.Pattern[str]:
    # key: "NAME" [,] value: { string_value: "..." }  (any whitespace, optional ':' and ',')
    return re.compile(
        r'(key\s*:\s*"' + re.escape(name) + r'"\s*,?\s*value\s*:?\s*\{\s*string_value\s*:\s*)'
        r'"(?:[^"\\]|\\.)*"'
    )


def has_parameter(config_text: str, name: str) -> bool:
    """Whether ``config_text`` has a string parameter ``name``."""
    return _parameter_pattern(name).search(config_text) is not None


def set_parameter(config_text: str, name: str, value: str) -> str:
    """``config_text`` with string parameter ``name`` set to ``value`` (appended if absent)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"invalid config.pbtxt parameter name {name!r}")
    pattern = _parameter_pattern(name)
    if pattern.search(config_text):
        return pattern.sub(lambda m: m.group(1) + _quote(value), config_text)
    entry = f'parameters: {{\n  key: {_quote(name)}\n  value: {{ string_value: {_quote(value)} }}\n}}\n'
    return config_text.rstrip("\n") + "\n" + entry


def render(src: Path, dst: Path, overrides: Mapping[str, str], env_path: str | None) -> list[str]:
    """Copy repository ``src`` to ``dst`` (replacing it) and apply the overrides.

    Returns one line per change made. Raises ``FileNotFoundError`` when ``src`` has no
    ``*/config.pbtxt``.
    """
    configs = sorted(src.glob("*/config.pbtxt"))
    if not configs:
        raise FileNotFoundError(f"no */config.pbtxt under model repository {src}")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    changes: list[str] = []
    for config in sorted(dst.glob("*/config.pbtxt")):
        text = config.read_text()
        model = config.parent.name
        if env_path and has_parameter(text, ENV_PATH_PARAMETER):
            text = set_parameter(text, ENV_PATH_PARAMETER, env_path)
            changes.append(f"{model}: {ENV_PATH_PARAMETER}={env_path}")
        for name, value in overrides.items():
            text = set_parameter(text, name, value)
            changes.append(f"{model}: {name}={value}")
        config.write_text(text)
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="model repository to copy (read-only is fine)")
    parser.add_argument("dst", type=Path, help="where to write the rendered copy")
    parser.add_argument("--env-path", default=None,
                        help=f"value for an existing {ENV_PATH_PARAMETER} parameter")
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
