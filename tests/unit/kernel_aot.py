"""Compile moonpipe's Triton kernels for NVIDIA GPUs without a GPU (run as a script).

The interpreter that runs the kernel tests on CPU executes the kernels as Python; it does
not run Triton's compiler, which rejects things the interpreter accepts (types of loop
variables, unsupported constructs). This script calls each launcher with CPU tensors of
every dtype, records the arguments it would launch with instead of launching, and
compiles each recorded launch ahead of time for the given architectures (Triton's
frontend, its MLIR passes, LLVM and the bundled ptxas: a cubin, no driver needed).

Run without TRITON_INTERPRET; prints one line per compiled variant and exits non-zero
on the first failure. Usage: ``python tests/unit/kernel_aot.py [ARCH ...]`` (default 90).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64",
          torch.int32: "i32", torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages")


class Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kw)`` records instead of launching."""

    def __init__(self, fn: Any, launches: list[tuple[Any, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.fn = fn
        self.launches = launches

    def __getitem__(self, grid: object) -> Callable[..., None]:
        def record(*args: Any, **kw: Any) -> None:
            self.launches.append((self.fn, args, kw))

        return record


def signature(fn: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], dict[Any, Any]]:
    """(signature, constexprs, attrs) of one launch, as Triton's JIT would specialise it."""
    sig: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    values = dict(zip([p.name for p in fn.params], args, strict=False))
    values.update({k: v for k, v in kw.items() if k not in _OPTIONS})
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr:
            sig[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            sig[param.name] = "*" + _TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, bool):
            sig[param.name] = "i1"
        elif isinstance(value, int):
            sig[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and value != 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[param.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {param.name} of type {type(value).__name__}")
    return sig, constexprs, attrs


def record_launches() -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """Every launch the launchers make for the tiny and moondream2 shapes in 3 dtypes."""
    from moonpipe.kernels import decode_attention, pointwise
    from moonpipe.model.layers import rotary_inv_freq

    launches: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
    for module, name in ((decode_attention, "_stage1"), (decode_attention, "_stage2"),
                         (pointwise, "_add3_layer_norm"), (pointwise, "_rotary_kv_write")):
        setattr(module, name, Recorder(getattr(module, name), launches))
    inv_freq = rotary_inv_freq(32, 10000.0, torch.device("cpu"))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for heads in (2, 32):  # tiny, moondream2
            dim = heads * 64
            k = torch.zeros((4 * 16, heads, 64), dtype=dtype)
            table = torch.zeros((2, 4), dtype=torch.long)
            positions = torch.zeros(2, dtype=torch.long)
            q = torch.zeros((2, heads, 64), dtype=dtype)
            decode_attention.paged_decode_attention(q, k, k.clone(), table, positions, 16, 2, block_n=64)
            x = torch.zeros((2, dim), dtype=dtype)
            w = torch.zeros(dim, dtype=dtype)
            pointwise.add3_layer_norm(x, x, x, w, w, 1e-5)
            pointwise.add3_layer_norm(x, x, x, None, None, 1e-5)
            qkv = torch.zeros((2, 3 * dim), dtype=dtype)
            pointwise.rotary_kv_write(qkv, positions, table, inv_freq, k, k.clone(), 16)
    return launches


def main(archs: list[int]) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernel_aot: run without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    launches = record_launches()
    seen: set[str] = set()
    for fn, args, kw in launches:
        sig, constexprs, attrs = signature(fn, args, kw)
        options = {k: v for k, v in kw.items() if k in _OPTIONS}
        key = repr((fn.__name__, sorted(sig.items()), sorted(constexprs.items()), sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        for arch in archs:
            src = ASTSource(fn=fn, signature=sig,
                            constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
            cubin = compiled.asm.get("cubin", b"")
            print(f"sm_{arch} {fn.__name__:<18} {constexprs} {options} cubin {len(cubin)} bytes")
            if not cubin:
                return 1
    print(f"compiled {len(seen)} kernel variants for {', '.join(f'sm_{a}' for a in archs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [90]))
