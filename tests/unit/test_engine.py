"""The engine end to end on the tiny synthetic checkpoint (CPU, no server)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from engine_support import CollectSink, png_bytes, run_all, signature

from moonpipe.config import EngineConfig
from moonpipe.engine import Engine
from moonpipe.errors import EngineStopped, InvalidRequest, QueueFull, RequestTooLarge
from moonpipe.model.checkpoint import ensure_checkpoint
from moonpipe.request import Request
from moonpipe.runtime.device_work import FaultHook
from moonpipe.runtime.image_lru import image_key
from moonpipe.testing import InjectedCrash

SKILLS = [("caption", ""), ("query", "what is here?"), ("point", "cat"), ("detect", "dog"), ("segment", "cup")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny")


def make_engine(ckpt: Path, fault_hook: FaultHook | None = None, **kw: object) -> Engine:
    return Engine(EngineConfig(checkpoint=str(ckpt), **kw), fault_hook=fault_hook)  # type: ignore[arg-type]


@pytest.fixture()
def engine(ckpt: Path) -> Iterator[Engine]:
    eng = make_engine(ckpt)
    yield eng
    eng.shutdown()


def mixed_requests(prefix: str, max_tokens: int = 24, stream: bool = False) -> list[Request]:
    img_a, img_b = png_bytes(1), png_bytes(2, (90, 300))
    reqs = [
        Request(f"{prefix}{skill}", skill, img_a, prompt, max_tokens=max_tokens, temperature=0.0, stream=stream)
        for skill, prompt in SKILLS
    ]
    reqs.append(Request(f"{prefix}caption-b", "caption", img_b, length="short", max_tokens=max_tokens,
                        temperature=0.0, stream=stream))
    return reqs


def assert_drained(engine: Engine) -> None:
    deadline = time.time() + 10
    while time.time() < deadline:
        st = engine.stats()
        if st.kv_pages_in_use == 0 and st.running == 0 and st.zombies == 0 and st.queue_depth == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"engine did not drain: {engine.stats()}")


def test_mixed_batch_depth2_equals_each_alone_at_depth1(ckpt: Path) -> None:
    with make_engine(ckpt, pipeline_depth=1) as solo:
        alone = {r.request_id: signature(run_all(solo, [r])[r.request_id].result)
                 for r in mixed_requests("x-")}
    with make_engine(ckpt, pipeline_depth=2) as eng:
        together = {rid: signature(s.result) for rid, s in run_all(eng, mixed_requests("x-")).items()}
        assert eng.stats().batch_size_mean > 1.5  # they really shared steps
        assert_drained(eng)
    assert together == alone
    kinds = {rid: sig for rid, sig in together.items()}
    assert kinds["x-point"][2], "point produced points"
    assert kinds["x-detect"][3], "detect produced boxes"
    assert kinds["x-segment"][3], "segment produced its box"


@pytest.mark.parametrize("seed", [0, 1])
def test_randomised_arrivals_and_aborts_depth1_equals_depth2(ckpt: Path, seed: int) -> None:
    rng = random.Random(seed)
    images = [png_bytes(10 + i, (rng.randint(40, 500), rng.randint(40, 500))) for i in range(3)]
    plan = []
    for i in range(12):
        skill, prompt = rng.choice(SKILLS)
        plan.append((Request(f"r{i}", skill, rng.choice(images), prompt or "", length=rng.choice(["short", "normal"]),
                             max_tokens=rng.randint(1, 30), temperature=0.0, stream=rng.random() < 0.5),
                     rng.random() < 0.3, rng.random() * 0.05))
    outcomes = []
    for depth in (1, 2):
        with make_engine(ckpt, pipeline_depth=depth, max_batch_size=4) as eng:
            sinks = {}
            for req, abort, delay in plan:
                sinks[req.request_id] = s = CollectSink()
                eng.submit(req, s)
                time.sleep(delay)
                if abort:
                    eng.abort(req.request_id)
            for s in sinks.values():
                assert s.done.wait(120)
                assert s.num_finals == 1
            assert_drained(eng)
            outcomes.append({rid: s.result for rid, s in sinks.items()})
    d1, d2 = outcomes
    aborted = {req.request_id for req, abort, _ in plan if abort}
    for rid in d1:
        if rid in aborted:
            for d in (d1, d2):  # cancelled, or it had already finished
                assert d[rid].finish_reason in ("cancelled", "stop", "length")
            continue
        assert signature(d1[rid]) == signature(d2[rid]), rid


def test_streamed_deltas_add_up_to_the_result(engine: Engine) -> None:
    sinks = run_all(engine, mixed_requests("s-", max_tokens=20, stream=True))
    for rid, s in sinks.items():
        res = s.result
        if res.skill in ("caption", "query", "segment"):
            assert "".join(d.text for d in s.deltas) == res.text, rid
        if res.skill == "point":
            assert tuple(p for d in s.deltas for p in d.points) == res.points
        if res.skill == "detect":
            assert tuple(b for d in s.deltas for b in d.boxes) == res.boxes
        assert res.num_output_tokens >= 1
        assert res.timings is not None and res.timings.ttft > 0


def test_abort_mid_stream_frees_pages(engine: Engine) -> None:
    s = CollectSink()
    engine.submit(Request("long", "caption", png_bytes(3), max_tokens=1500, stream=True), s)
    deadline = time.time() + 60
    while not s.deltas and time.time() < deadline:
        time.sleep(0.005)
    assert s.deltas, "no delta streamed"
    engine.abort("long")
    engine.abort("long")  # idempotent
    assert s.result.finish_reason == "cancelled"
    assert s.num_finals == 1
    assert_drained(engine)


def test_abort_before_admission(ckpt: Path) -> None:
    with make_engine(ckpt, max_batch_size=1) as eng:
        first, second = CollectSink(), CollectSink()
        eng.submit(Request("a", "caption", png_bytes(4), max_tokens=200), first)
        eng.submit(Request("b", "caption", png_bytes(4), max_tokens=200), second)
        eng.abort("b")
        assert second.result.finish_reason == "cancelled"
        assert second.result.num_output_tokens == 0
        assert first.result.finish_reason in ("stop", "length")
        assert_drained(eng)


def test_fault_in_a_forward_fails_only_that_step(ckpt: Path) -> None:
    fired: list[list[int]] = []

    def hook(kind: str, seq_rows: list[int]) -> None:
        if kind == "decode" and not fired:  # the first decode step only
            fired.append(seq_rows)
            raise RuntimeError("injected fault")

    with make_engine(ckpt, fault_hook=hook) as engine:
        sinks = run_all(engine, mixed_requests("f-", max_tokens=8))
        failed = [rid for rid, s in sinks.items() if s.errors]
        assert fired and failed
        for rid in failed:
            assert "injected fault" in str(sinks[rid].errors[0])
            assert sinks[rid].num_finals == 1
        again = run_all(engine, [Request("after", "caption", png_bytes(5), max_tokens=4)])
        assert again["after"].result.num_output_tokens == 4
        assert engine.ready
        assert_drained(engine)


def test_crashed_scheduler_reports_not_ready_and_fails_pending(ckpt: Path) -> None:
    def hook(kind: str, seq_rows: list[int]) -> None:
        if kind == "decode":
            raise InjectedCrash("boom")

    eng = make_engine(ckpt, fault_hook=hook)
    try:
        sinks = {}
        for r in mixed_requests("c-", max_tokens=50):
            sinks[r.request_id] = s = CollectSink()
            eng.submit(r, s)
        for s in sinks.values():
            assert s.done.wait(60), "a pending request hung after the crash"
            assert s.num_finals == 1 and isinstance(s.errors[0], EngineStopped)
        assert not eng.ready
        with pytest.raises(EngineStopped):
            eng.submit(Request("late", "caption", png_bytes(1)), CollectSink())
    finally:
        eng.shutdown()


def test_shutdown_mid_load_ends_every_request(ckpt: Path) -> None:
    eng = make_engine(ckpt)
    sinks = {}
    for r in mixed_requests("d-", max_tokens=400, stream=True):
        sinks[r.request_id] = s = CollectSink()
        eng.submit(r, s)
    time.sleep(0.2)
    eng.shutdown()
    for s in sinks.values():
        assert s.done.wait(10)
        assert s.num_finals == 1


def test_bad_requests_are_rejected_before_queueing(engine: Engine) -> None:
    bad_image = CollectSink()  # images decode off the caller's thread: the error comes to the sink
    engine.submit(Request("bad", "caption", b"not an image"), bad_image)
    assert bad_image.done.wait(30) and bad_image.num_finals == 1
    assert isinstance(bad_image.errors[0], InvalidRequest) and "IMAGE" in str(bad_image.errors[0])
    with pytest.raises(InvalidRequest, match="PROMPT"):
        engine.submit(Request("long-prompt", "query", png_bytes(1), "word " * 5000), CollectSink())
    assert engine.stats().requests_submitted == 0


def test_request_that_can_never_fit_is_rejected(ckpt: Path) -> None:
    with make_engine(ckpt, num_kv_pages=60, kv_page_size=16) as eng:
        with pytest.raises(RequestTooLarge, match="MAX_TOKENS"):
            eng.submit(Request("big", "caption", png_bytes(1), max_tokens=1000), CollectSink())
        ok = run_all(eng, [Request("small", "caption", png_bytes(1), max_tokens=5)])
        assert ok["small"].result.num_output_tokens == 5


def test_admission_never_overcommits_and_everything_completes(ckpt: Path) -> None:
    # Room for about two sequences at a time: the rest wait for pages, none stalls.
    with make_engine(ckpt, num_kv_pages=2 * 50 + 1, kv_page_size=16, max_batch_size=8) as eng:
        reqs = [Request(f"q{i}", "caption", png_bytes(i), max_tokens=40, temperature=0.0) for i in range(6)]
        sinks = {r.request_id: CollectSink() for r in reqs}
        for r in reqs:
            eng.submit(r, sinks[r.request_id])
        peak = 0
        while not all(s.done.is_set() for s in sinks.values()):
            st = eng.stats()
            peak = max(peak, st.running)
            assert st.kv_pages_in_use <= st.kv_pages_total
            time.sleep(0.002)
        assert peak <= 2
        for sink in sinks.values():
            res = sink.result
            assert (res.finish_reason, res.num_output_tokens == 40) in (("length", True), ("stop", False))
        assert_drained(eng)


def test_queue_full(ckpt: Path) -> None:
    with make_engine(ckpt, max_batch_size=1, max_queue=1) as eng:
        eng.submit(Request("a", "caption", png_bytes(1), max_tokens=300), CollectSink())
        eng.submit(Request("b", "caption", png_bytes(1), max_tokens=300), CollectSink())
        with pytest.raises(QueueFull):
            eng.submit(Request("c", "caption", png_bytes(1), max_tokens=300), CollectSink())
        with pytest.raises(InvalidRequest, match="already in flight"):
            eng.submit(Request("a", "caption", png_bytes(1)), CollectSink())


def test_sampled_decoding_is_seeded(ckpt: Path) -> None:
    outs = []
    for _ in range(2):
        with make_engine(ckpt, seed=7) as eng:
            r = Request("t", "caption", png_bytes(1), max_tokens=12, temperature=1.0, top_p=0.9)
            outs.append(run_all(eng, [r])["t"].result.token_ids)
    assert outs[0] == outs[1] and len(outs[0]) >= 1


def test_bucket_padding_rows_do_not_disturb_real_rows(ckpt: Path) -> None:
    """The CUDA-graph path pads batches to buckets with scratch rows; run that path on CPU."""
    with make_engine(ckpt) as plain:
        want = {rid: signature(s.result) for rid, s in run_all(plain, mixed_requests("p-")).items()}
    with make_engine(ckpt, max_batch_size=8) as padded:
        padded.runner.pad_buckets = True
        got = {rid: signature(s.result) for rid, s in run_all(padded, mixed_requests("p-")).items()}
        assert_drained(padded)
    assert got == want


def test_cached_image_skips_decode_and_survives_eviction(ckpt: Path) -> None:
    """A repeated image is not decoded again at submit; if its cached embedding is evicted
    before its prefill, the runner decodes it there, with the same result."""
    img_a, img_b = png_bytes(21), png_bytes(22)
    with make_engine(ckpt, image_cache_size=1) as eng:
        first = run_all(eng, [Request("a1", "caption", img_a, max_tokens=6, temperature=0.0)])["a1"].result
        assert eng.runner.has_image(image_key(img_a))
        # b is submitted first, so its image is encoded first and evicts a's embedding.
        sinks = run_all(eng, [Request("b", "caption", img_b, max_tokens=6, temperature=0.0),
                              Request("a2", "caption", img_a, max_tokens=6, temperature=0.0)])
        assert sinks["a2"].result.token_ids == first.token_ids
        assert_drained(eng)


def test_a_crash_mid_commit_still_delivers_finals_decided_before_it(
        ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Request a ends in the same commit in which b's constraint raises (killing the
    scheduler): a still gets its result, b its error; nobody is left without a final."""
    eng = make_engine(ckpt)
    try:
        real = eng.skills.make_constraint

        class Exploding:
            def __init__(self, inner: object) -> None:
                self._inner = inner
                self.prompt_ids = inner.prompt_ids  # type: ignore[attr-defined]

            def spec(self, k: int) -> object:
                return self._inner.spec(k)  # type: ignore[attr-defined]

            def advance(self, output: object) -> object:
                raise InjectedCrash("constraint bug")

        def make(request: Request, *args: object, **kw: object) -> object:
            c = real(request, *args, **kw)  # type: ignore[arg-type]
            return Exploding(c) if request.request_id == "b" else c

        # Images decode in a pool, so a and b reach the scheduler together only if their
        # image is already known (then submit queues them at once, in order).
        run_all(eng, [Request("warm", "caption", png_bytes(1), max_tokens=1)])
        monkeypatch.setattr(eng.skills, "make_constraint", make)
        sinks = run_all(eng, [Request("a", "caption", png_bytes(1), max_tokens=1, temperature=0.0),
                              Request("b", "caption", png_bytes(1), max_tokens=5, temperature=0.0)])
        assert sinks["a"].result.num_output_tokens == 1
        assert sinks["b"].num_finals == 1 and isinstance(sinks["b"].errors[0], EngineStopped)
        assert not eng.ready
    finally:
        eng.shutdown()


def test_output_processing_failure_still_ends_the_request(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from moonpipe.skills.detok import IncrementalDetokenizer

    def boom(self: object) -> str:
        raise RuntimeError("detokeniser bug")

    monkeypatch.setattr(IncrementalDetokenizer, "flush", boom)
    sinks = run_all(engine, [Request("d", "caption", png_bytes(2), max_tokens=3, stream=True)])
    assert sinks["d"].num_finals == 1
    assert "detokeniser bug" in str(sinks["d"].errors[0])


def test_graph_capture_staging_of_padding_only_rows(engine: Engine) -> None:
    """Capture stages a slot with zero real rows (all padding): scratch seq row,
    position 0, scratch page 0."""
    runner = engine.runner
    slot = runner.slots[0]
    no_rows = np.zeros((0, runner.layout.max_pages_per_seq), dtype=np.int64)
    empty = np.empty(0, dtype=np.int64)
    runner.stage_rows(slot, empty, empty, no_rows, 4, 8)
    assert slot.seq_rows[0][:4].tolist() == [runner.scratch_seq_row] * 4
    assert slot.positions[0][:4].tolist() == [0] * 4
    assert int(slot.page_table[0][:4, :8].abs().sum()) == 0
