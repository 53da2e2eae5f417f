"""Counting the kernels of one decode step, on any device.

A decode step is what a CUDA graph captures: ``DeviceWork.decode`` (embedding, the text
decoder, the lm head) then ``DeviceWork.sample``. :class:`LaunchCounter` counts, on the
calling thread, every operator that reaches a backend: aten ops that launch device work
(views and allocations launch nothing and are left out) and moonpipe's Triton operators
(``ops.LAUNCHES`` kernels each). On a GPU one such op is usually one kernel; a few aten
ops launch two (SDPA, some reductions), so on CUDA :func:`count_step` also asks the
profiler for the kernels it really saw (``cuda_kernels``). On CPU the count works the
same (with the Triton interpreter for the kernel paths), so CI sees a change in it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from moonpipe.config import EngineConfig, ModelConfig, pages_needed
from moonpipe.model.moondream import MoondreamModel
from moonpipe.runtime.device_work import DeviceWork
from moonpipe.runtime.slots import StepShape, StepSlot
from moonpipe.step import SamplingFlags

__all__ = ["LaunchCounter", "count_step"]

# ops that allocate or only set metadata: no kernel
_NO_KERNEL = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::detach",
                        "aten::lift_fresh", "aten::set_", "aten::resize_"})
_SYNCS = frozenset({"aten::_local_scalar_dense", "aten::item", "aten::nonzero"})
_LAUNCHES = {"moonpipe::paged_decode_attention": 2}  # every other moonpipe op launches one


class LaunchCounter(TorchDispatchMode):
    """``with LaunchCounter() as c: ...``; then ``c.total``, ``c.ops`` (per op), ``c.syncs``."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func._schema.name
        if name in _SYNCS:
            self.syncs += 1
        if not func.is_view and name not in _NO_KERNEL:
            self.ops[name] += _LAUNCHES.get(name, 1)
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _cuda_kernels(fn: Any) -> int | None:
    """Kernels the CUDA profiler records while ``fn`` runs (None if it cannot tell)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception:  # CUPTI missing or busy: the dispatch count still stands
        return None


def _work(model: MoondreamModel, model_cfg: ModelConfig, cfg: EngineConfig, batch: int,
          context: int) -> tuple[DeviceWork, StepShape]:
    """A DeviceWork over a small cache of its own, its slot 0 staged with ``batch`` rows at
    position ``context - 1`` (distinct pages per row)."""
    text = model_cfg.text
    device = torch.device(cfg.device)
    dtype = model.text.wte.dtype
    per_row = pages_needed(context, cfg.kv_page_size)
    shape = (text.n_layers, 1 + batch * per_row, cfg.kv_page_size, text.n_heads, text.head_dim)
    k = torch.zeros(shape, dtype=dtype, device=device)
    slot = StepSlot(0, batch, per_row, text.dim, text.vocab_size, device, dtype)
    rows = batch + 1
    work = DeviceWork(
        model=model, model_cfg=model_cfg, cfg=cfg, dtype=dtype, k=k, v=torch.zeros_like(k), slots=[slot],
        next_token=torch.zeros(rows, dtype=torch.long, device=device),
        next_coord=torch.zeros(rows, dtype=torch.float32, device=device),
        next_size=torch.zeros((rows, 2), dtype=torch.float32, device=device),
        feed_kind=torch.zeros(rows, dtype=torch.long, device=device),
        mask_table=torch.ones((1, text.vocab_size), dtype=torch.bool, device=device))
    slot.batch = slot.bucket = batch
    slot.num_pages = per_row
    StepSlot.host_np(slot.seq_rows)[:] = np.arange(batch)
    StepSlot.host_np(slot.positions)[:] = context - 1
    StepSlot.host_np(slot.page_table)[:] = 1 + np.arange(batch * per_row).reshape(batch, per_row)
    StepSlot.host_np(slot.greedy)[:] = True
    slot.upload_inputs()
    slot.upload_sampling()
    return work, slot.shape()


def count_step(model: MoondreamModel, model_cfg: ModelConfig, cfg: EngineConfig, *, batch: int = 1,
               context: int = 800) -> dict[str, Any]:
    """Kernels of one decode step with ``cfg.decode_kernels`` on ``cfg.device``:
    ``{"decode_kernels", "forward", "sampling", "total", "syncs", "top_ops", "cuda_kernels"}``."""
    work, shape = _work(model, model_cfg, cfg, batch, context)
    flags = SamplingFlags(any_mask=False, any_banned=True, any_sampled=False, any_coord=False, any_size=False)
    with torch.inference_mode():
        work.decode(0, shape)  # warm-up: Triton compiles, library handles, allocator
        work.sample(0, shape, flags)
        with LaunchCounter() as forward:
            work.decode(0, shape)
        with LaunchCounter() as sampling:
            work.sample(0, shape, flags)
        cuda = None
        if torch.device(cfg.device).type == "cuda":
            cuda = _cuda_kernels(lambda: work.decode(0, shape))
    return {
        "decode_kernels": work.decoder.kind,
        "batch": batch,
        "context": context,
        "forward": forward.total,
        "sampling": sampling.total,
        "total": forward.total + sampling.total,
        "syncs": forward.syncs + sampling.syncs,
        "top_ops": dict(forward.ops.most_common(8)),
        "cuda_kernels": cuda,
    }
