"""A copy of a Triton model repository with ``config.pbtxt`` parameters overridden.

One implementation for every way to change the engine's settings without editing the
tracked ``model_repository/``: ``moonpipe serve --param NAME=VALUE`` (and
``MOONPIPE_PARAM_<name>`` in its environment), the Docker entrypoint
(``docker/render_model_repository.py``) and the benchmarks.

Names are the ``EngineConfig``/``AdapterConfig`` field names, which the adapter validates
at load (an unknown name fails the load naming it, so a typo cannot pass silently). Only
``string_value`` parameters are touched, with a text edit of the protobuf text format
(the container image has no protobuf package); a parameter the file lacks is appended as
a new top-level ``parameters`` entry, which the text format allows. Python 3.10 (image).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "ENV_PATH_PARAMETER",
    "PARAM_ENV_PREFIX",
    "has_parameter",
    "overrides_from_env",
    "parse_override",
    "render",
    "set_parameter",
]

PARAM_ENV_PREFIX = "MOONPIPE_PARAM_"
ENV_PATH_PARAMETER = "EXECUTION_ENV_PATH"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid config.pbtxt parameter name {name!r} (letters, digits, _ . -)")
    return name


def overrides_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """``MOONPIPE_PARAM_<name>`` variables as ``{name: value}`` (names keep their case)."""
    return {
        key[len(PARAM_ENV_PREFIX):]: value
        for key, value in sorted(env.items())
        if key.startswith(PARAM_ENV_PREFIX) and len(key) > len(PARAM_ENV_PREFIX)
    }


def parse_override(text: str) -> tuple[str, str]:
    """``"NAME=VALUE"`` as ``(name, value)``; raises ``ValueError`` naming what is wrong."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME=VALUE (e.g. max_batch_size=16), got {text!r}")
    return _check_name(name.strip()), value


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
    """``config_text`` with string parameter ``name`` set to ``value`` (appended if absent,
    one line in the style of the project's ``config.pbtxt``)."""
    pattern = _parameter_pattern(_check_name(name))
    if pattern.search(config_text):
        return pattern.sub(lambda m: m.group(1) + _quote(value), config_text)
    entry = f"parameters: {{ key: {_quote(name)} value: {{ string_value: {_quote(value)} }} }}\n"
    return config_text.rstrip("\n") + "\n" + entry


def render(src: Path, dst: Path, overrides: Mapping[str, str] | Iterable[tuple[str, str]],
           env_path: str | None = None) -> list[str]:
    """Copy repository ``src`` to ``dst`` (replacing it) and set ``overrides`` in every
    model's ``config.pbtxt``; ``env_path`` replaces an existing ``EXECUTION_ENV_PATH``.

    Returns one line per change made. Raises ``FileNotFoundError`` when ``src`` has no
    ``*/config.pbtxt`` and ``ValueError`` for a bad parameter name (before copying).
    """
    pairs = list(overrides.items() if isinstance(overrides, Mapping) else overrides)
    for name, _ in pairs:
        _check_name(name)
    if not sorted(src.glob("*/config.pbtxt")):
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
        for name, value in pairs:
            text = set_parameter(text, name, value)
            changes.append(f"{model}: {name}={value}")
        config.write_text(text)
    return changes
