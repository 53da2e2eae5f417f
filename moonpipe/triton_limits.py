"""What tritonserver itself must refuse: oversized requests' shared memory, admin APIs.

Both are tritonserver flags, built here for every way moonpipe starts a server
(``moonpipe serve`` and the tests through ``triton_local.TritonServer``, the container
entrypoint through ``python -m moonpipe.triton_limits``), so they cannot drift apart.

**Shared memory.** The Python backend copies every request's input tensors into the
stub's shared-memory region (``/dev/shm/triton_python_backend_shm_region_*``) before
the model sees them, so an IMAGE that moonpipe refuses for its size has already been
copied. The region grows to fit and never shrinks (a 307 MiB request left it 308 MiB
larger). Triton 2.51 has no limit that acts earlier: its gRPC server takes messages up
to 2 GiB (fixed), ``--http-max-input-size`` only exists from Triton 2.59, and the
backend has no maximum region size. What it does have: the region starts at
``shm-default-byte-size`` (allocated at once) and grows in steps of
``shm-growth-byte-size`` with ``posix_fallocate``, which fails cleanly when /dev/shm
cannot hold the step. So moonpipe sizes the region for two images of
``max_image_bytes`` in transit (:func:`shm_region_bytes`) and makes every growth step
1 TiB: no /dev/shm holds that, so the region keeps its start size, and a request that
does not fit is refused by the backend ("Failed to increase the shared memory pool
size ...") before the stub sees it.

**Admin APIs.** Triton answers ``POST /v2/logging``, the model-repository, shared-memory
and trace APIs for anyone who reaches its ports. :func:`restricted_api_args` makes them
require the header :data:`ADMIN_KEY_HEADER` (gRPC metadata
``triton-grpc-protocol-moonpipe-admin-key``) with the key from ``MOONPIPE_ADMIN_KEY``;
with no key set, a random one nobody knows is used, so the APIs are closed. Inference,
health, metadata, model configuration and statistics stay open.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "ADMIN_APIS",
    "ADMIN_KEY_ENV",
    "ADMIN_KEY_HEADER",
    "GROWTH_STEP_BYTES",
    "admin_key_from_env",
    "dev_shm_bounds",
    "max_image_bytes_of",
    "python_backend_shm_args",
    "restricted_api_args",
    "server_limit_args",
    "shm_region_bytes",
]

MIB = 1 << 20
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_KEY_HEADER = "moonpipe-admin-key"  # over gRPC: metadata triton-grpc-protocol-moonpipe-admin-key
ADMIN_KEY_ENV = "MOONPIPE_ADMIN_KEY"
GROWTH_STEP_BYTES = 1 << 40  # 1 TiB: larger than any /dev/shm, so growing always fails
REGION_HEADROOM_BYTES = 8 * MIB  # the backend's message queues, responses, bookkeeping
DEFAULT_MAX_IMAGE_BYTES = 32 * MIB  # EngineConfig's default, when config.pbtxt sets none
_MAX_IMAGE_BYTES = re.compile(r'key\s*:\s*"max_image_bytes"\s*,?\s*value\s*:?\s*\{\s*string_value\s*:\s*"(\d+)"')


def shm_region_bytes(max_image_bytes: int) -> int:
    """The fixed size of the stub's shared-memory region: two images of the largest
    accepted size in transit (Triton copies the next request's inputs while the previous
    one's are released; measured: 16 concurrent 30 MiB images peak at two) plus headroom."""
    if max_image_bytes <= 0:
        raise ValueError(f"max_image_bytes must be positive, got {max_image_bytes}")
    return 2 * max_image_bytes + REGION_HEADROOM_BYTES


def dev_shm_bounds(max_image_bytes: int) -> tuple[int, int]:
    """(least, most) bytes for a container's /dev/shm: the fixed region plus 32 MiB for
    anything else, and at most four regions' worth (the cap is the point: in Kubernetes
    /dev/shm is the pod's memory). On CPU with ``cpu_worker=process`` the KV cache lives
    there too: size it for that instead."""
    region = shm_region_bytes(max_image_bytes)
    return region + 32 * MIB, 4 * region


def python_backend_shm_args(max_image_bytes: int) -> list[str]:
    """``--backend-config`` flags that fix the region at :func:`shm_region_bytes`."""
    return [f"--backend-config=python,shm-default-byte-size={shm_region_bytes(max_image_bytes)}",
            f"--backend-config=python,shm-growth-byte-size={GROWTH_STEP_BYTES}"]


def restricted_api_args(admin_key: str) -> list[str]:
    """Flags that make the admin APIs (:data:`ADMIN_APIS`) require the admin key. Triton
    2.51's syntax is ``<apis>:<header>=<value>`` (its help text shows a comma instead)."""
    if not admin_key or any(c in admin_key for c in ":=,\n") or admin_key != admin_key.strip():
        raise ValueError(f"{ADMIN_KEY_ENV} must be non-empty, without spaces at its ends, ':', '=' or ','")
    apis = ",".join(ADMIN_APIS)
    return [f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={admin_key}",
            f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={admin_key}"]


def admin_key_from_env(env: Mapping[str, str] | None = None) -> str:
    """``MOONPIPE_ADMIN_KEY``, or a random key (the admin APIs are then closed to all)."""
    key = (os.environ if env is None else env).get(ADMIN_KEY_ENV, "")
    return key or secrets.token_urlsafe(24)


def max_image_bytes_of(model_repository: Path, model: str = "moondream") -> int:
    """``max_image_bytes`` of ``model``'s config.pbtxt (EngineConfig's default if unset)."""
    config = model_repository / model / "config.pbtxt"
    found = _MAX_IMAGE_BYTES.search(config.read_text()) if config.is_file() else None
    return int(found.group(1)) if found else DEFAULT_MAX_IMAGE_BYTES


def server_limit_args(model_repository: Path, admin_key: str) -> list[str]:
    """Every flag of this module for a server over ``model_repository``."""
    return python_backend_shm_args(max_image_bytes_of(model_repository)) + restricted_api_args(admin_key)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m moonpipe.triton_limits MODEL_REPOSITORY``: print the flags, one per line
    (the container entrypoint reads them), the admin key from ``MOONPIPE_ADMIN_KEY``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model_repository", type=Path)
    args = parser.parse_args(argv)
    try:
        flags = server_limit_args(args.model_repository, admin_key_from_env())
    except (OSError, ValueError) as exc:
        print(f"moonpipe.triton_limits: {exc}", file=sys.stderr)
        return 1
    print("\n".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
