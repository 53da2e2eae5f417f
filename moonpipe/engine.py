"""Engine: the public face of moonpipe's engine package (no Triton anywhere).

Threads::

    caller(s)        submit(): validate, tokenise; the image -> decode pool (or, if its
                     bytes were seen before, straight to the inbox)
    image decoders   decode + crop off the caller's thread (model/decode_pool.py) -> inbox
    scheduler        owns every mutable structure; the tick (scheduler/scheduler.py)
    compute worker   CPU only: runs forwards/sampling in order (a thread,
                     runtime/cpu_stream.py, or a process, runtime/device_process.py)
    copy worker      CPU only: device->host copies
    output           detokenise, post-process, call the Sink (output.py)

Every submitted request gets exactly one ``on_result`` or ``on_error``: normal end,
cancellation (``finish_reason == "cancelled"``), a bad image (``InvalidRequest``, from a
decode worker), a failed step, shutdown, or a crashed scheduler thread (``ready`` turns
False and pending requests get ``EngineStopped``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from pathlib import Path

import torch

from moonpipe.affinity import pin_thread
from moonpipe.config import EngineConfig, KVLayout, ModelConfig, torch_dtype
from moonpipe.errors import (
    CheckpointError,
    EngineError,
    EngineStopped,
    InvalidRequest,
    QueueFull,
    RequestTooLarge,
    raise_limit_hint,
)
from moonpipe.model.decode_pool import DecodedImage, ImageDecodePool, ImageLimits
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.model.weights import load_model
from moonpipe.output import OutputProcessor
from moonpipe.request import Request, Sink, Timings
from moonpipe.runtime.device_work import FaultHook
from moonpipe.runtime.image_lru import image_key
from moonpipe.runtime.runner import ModelRunner
from moonpipe.scheduler.scheduler import Command, Scheduler
from moonpipe.scheduler.sequence import Sequence
from moonpipe.skills import SkillSet, sampling_defaults
from moonpipe.telemetry import EngineStats, StepTotals, Telemetry

__all__ = ["Engine", "EngineStats"]

log = logging.getLogger("moonpipe.engine")


class Engine:
    """Load a checkpoint, start the scheduler, serve requests (see module docstring)."""

    def __init__(self, config: EngineConfig, *, model: MoondreamModel | None = None,
                 tokenizer: Tokenizer | None = None, model_config: ModelConfig | None = None,
                 fault_hook: FaultHook | None = None) -> None:
        """Build from ``config.checkpoint``; or from an in-memory ``model`` + ``tokenizer`` +
        ``model_config`` (benchmarks with random full-size weights). ``fault_hook`` is
        test-only (``moonpipe/testing.py``): it runs inside every forward, and raising
        there fails that step."""
        self.config = config
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("EngineConfig.device is 'cuda' but no CUDA device is available")
        if model is None:
            if not config.checkpoint:
                raise ValueError("EngineConfig.checkpoint: a checkpoint directory is required")
            ckpt = Path(config.checkpoint)
            if not ckpt.is_dir():
                raise CheckpointError(f"checkpoint directory {ckpt} does not exist")
            model_config = ModelConfig.from_dir(ckpt)
            tokenizer = Tokenizer.from_file(ckpt)
            model = load_model(ckpt, dtype=torch_dtype(config.dtype), device=device)
        if tokenizer is None or model_config is None:
            raise ValueError("Engine: pass model, tokenizer and model_config together")
        model.eval()
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.skills = SkillSet(tokenizer, model_config.tokenizer)
        masks = self.skills.vocab_masks
        self._mask_index = {m.name: i for i, m in enumerate(masks, start=1)}
        self.telemetry = Telemetry()
        self.kv_layout = KVLayout.from_configs(config, model_config)
        self.runner = ModelRunner(model, model_config, config, self.kv_layout, masks, fault_hook=fault_hook)
        self.output = OutputProcessor(tokenizer, cpus=self.runner.streams.host_cpus)
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._decoding: dict[str, bool] = {}  # request id -> aborted, while its image decodes
        self._ids = itertools.count()
        self._accepting = True
        self._alive = True
        self.scheduler = Scheduler(self.runner, self.output, self.telemetry, config, self.kv_layout,
                                   on_final=self._forget_request)
        limits = ImageLimits(config.max_image_pixels, config.max_image_scans,
                             config.max_image_decode_ms / 1000.0, model_config.vision.max_crops)
        host_cpus = self.runner.streams.host_cpus
        self._images = ImageDecodePool(limits, config.image_decode_workers,
                                       on_worker_start=lambda: pin_thread(host_cpus))
        self._thread = threading.Thread(target=self._run, name="moonpipe-scheduler", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public
    @property
    def ready(self) -> bool:
        return (self._alive and self._accepting and self._thread.is_alive()
                and self.runner.streams.compute.healthy)

    def submit(self, request: Request, sink: Sink) -> None:
        """Validate and queue ``request``; raises before queuing anything if it is bad.

        The image is decoded afterwards, off this thread: a bad image ends the request
        through ``sink.on_error`` (``InvalidRequest("IMAGE: ...")``), not by raising here.
        """
        if not self.ready:
            raise EngineStopped("UNAVAILABLE: the engine is not accepting requests")
        seq = self._prepare(request, sink)
        with self._lock:  # the same lock orders this put before a crash/stop drains the inbox
            if not (self._alive and self._accepting):
                raise EngineStopped("UNAVAILABLE: the engine is not accepting requests")
            if request.request_id in self._active:
                raise InvalidRequest(f"request id {request.request_id!r} is already in flight")
            if len(self._active) >= self.config.max_queue + self.config.max_batch_size:
                raise QueueFull(f"UNAVAILABLE: {len(self._active)} requests in flight; retry later")
            # Identical bytes were decoded (and valid) before if their embedding or their
            # prefix is cached: a racy hint, a miss at prefill time decodes there.
            if self.runner.has_image(seq.image_key) or self.scheduler.has_cached_prefix(seq.image_key):
                self._enqueue(seq)
            else:
                self._images.submit(seq.image, functools.partial(self._image_decoded, seq))
                self._decoding[request.request_id] = False
            self._active.add(request.request_id)

    @property
    def num_in_flight(self) -> int:
        """Requests submitted and not yet given their final callback."""
        with self._lock:
            return len(self._active)

    def abort(self, request_id: str) -> None:
        """Cancel a request (idempotent): it ends with finish_reason 'cancelled'."""
        with self._lock:
            if request_id in self._decoding:  # the scheduler does not know it yet: repeat later
                self._decoding[request_id] = True
        self.scheduler.inbox.put(Command("abort", request_id=request_id))

    def stats(self) -> EngineStats:
        live = self.scheduler.live_counts()
        live["queue_depth"] += self._images.num_pending  # waiting for their image, then admission
        return self.telemetry.snapshot(ready=self.ready, pipeline_depth=self.config.pipeline_depth, **live)

    def clear_prefix_cache(self) -> None:
        """Drop every prefix-cache entry (pages no request holds become free)."""
        self.scheduler.inbox.put(Command("clear_prefix_cache"))

    def reset_step_totals(self) -> StepTotals:
        """Return and reset cumulative decode-step totals (for benchmarks)."""
        return self.telemetry.reset_totals()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every pending request (EngineStopped), join threads."""
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
        self.scheduler.inbox.put(Command("stop"))
        self._images.close(timeout=timeout)  # queued images: EngineStopped; decoding ones finish
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            # Still draining (e.g. a long CPU prefill): closing the workers or the output
            # thread now would strand the final callbacks it is about to emit. Leave them
            # (daemon threads); the scheduler delivers every final when it gets there.
            log.warning("engine shutdown: the scheduler is still draining after %.1f s", timeout)
            return
        self.output.close(timeout=timeout)  # after every final event was queued
        self.runner.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --------------------------------------------------------------- private
    def _prepare(self, request: Request, sink: Sink) -> Sequence:
        cfg, text = self.config, self.model_config.text
        if len(request.image) > cfg.max_image_bytes:
            raise InvalidRequest(f"IMAGE: {len(request.image)} bytes is over the limit of {cfg.max_image_bytes}; "
                                 f"send it smaller (JPEG, fewer pixels), {raise_limit_hint('max_image_bytes')}")
        key = image_key(bytes(request.image))
        constraint = self.skills.make_constraint(request, self._mask_index,
                                                 max_prompt_tokens=cfg.max_prompt_tokens)
        temperature, top_p, max_tokens, _ = sampling_defaults(request)
        prompt_ids = tuple(constraint.prompt_ids)
        prefix = self.model_config.prefix_len + len(prompt_ids)
        room = text.max_context - prefix - 1
        if room < 1:
            raise RequestTooLarge(f"PROMPT: {len(prompt_ids)} tokens leave no room in the {text.max_context}-token context")
        max_outputs = min(max_tokens, room)
        num_positions = prefix + max_outputs + 1
        layout = self.kv_layout
        if layout.pages_needed(num_positions) > layout.capacity:
            raise RequestTooLarge(
                f"MAX_TOKENS: this request needs {num_positions} KV positions but the whole pool holds "
                f"{layout.capacity * layout.page_size}; lower MAX_TOKENS"
            )
        return Sequence(
            seq_id=next(self._ids), request=request, sink=sink, constraint=constraint,
            prompt_ids=prompt_ids, crops=None, tiling=(1, 1), image_key=key, image=bytes(request.image),
            temperature=float(temperature), top_p=float(top_p), num_prompt_tokens=prefix,
            max_outputs=max_outputs, num_positions=num_positions, timings=Timings(submitted=time.perf_counter()),
        )

    def _enqueue(self, seq: Sequence) -> None:
        """Hand a request whose image is ready to the scheduler (``self._lock`` held)."""
        self.telemetry.count_request(submitted=1, prompt_tokens=seq.num_prompt_tokens)
        self.scheduler.inbox.put(Command("submit", seq=seq))

    def _image_decoded(self, seq: Sequence, image: DecodedImage | None, error: EngineError | None) -> None:
        """A decode worker finished ``seq``'s image: queue the request, or end it."""
        if image is not None:
            seq.crops, seq.tiling = image.crops, image.tiling
        with self._lock:
            aborted = self._decoding.pop(seq.request_id, False)
            if error is None and self._alive and self._accepting:
                self._enqueue(seq)
                if aborted:
                    self.scheduler.inbox.put(Command("abort", request_id=seq.request_id))
                return
            self._active.discard(seq.request_id)
        seq.sink.on_error(seq.request_id, error or EngineStopped(
            "UNAVAILABLE: the engine stopped before this request's image was decoded"))

    def _forget_request(self, request_id: str) -> None:
        with self._lock:
            self._active.discard(request_id)

    def _run(self) -> None:
        pin_thread(self.runner.streams.host_cpus)
        try:
            with torch.inference_mode():
                self.scheduler.run()
        except BaseException as exc:
            log.exception("scheduler thread crashed")
            with self._lock:
                self._alive = False
            self.scheduler.fail_all(EngineStopped(f"UNAVAILABLE: the scheduler thread crashed: {exc}"),
                                    crashed=True)

