"""The prefix cache through the real engine (tiny model, CPU): the same greedy outputs with
the cache on and off, at both depths, under many requests per image, aborts and
evictions; and every page free once the cache is cleared."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from engine_support import CollectSink, png_bytes, run_all, signature
from test_engine import SKILLS, assert_drained, ckpt, make_engine  # noqa: F401 (fixture)

from moonpipe.engine import Engine
from moonpipe.request import Request
from moonpipe.runtime.image_lru import image_key


def _plan(seed: int) -> list[tuple[Request, bool]]:
    rng = random.Random(seed)
    images = [png_bytes(40 + i, (rng.randint(40, 300), rng.randint(40, 300))) for i in range(3)]
    plan = []
    for i in range(14):
        skill, prompt = rng.choice(SKILLS)
        request = Request(f"r{i}", skill, images[i % 3 if i < 6 else rng.randrange(3)], prompt or "",
                          max_tokens=rng.randint(2, 14), temperature=0.0, stream=rng.random() < 0.5)
        plan.append((request, rng.random() < 0.2))
    return plan


def _run(engine: Engine, plan: list[tuple[Request, bool]]) -> dict[str, CollectSink]:
    sinks = {}
    for request, abort in plan:
        sinks[request.request_id] = s = CollectSink()
        engine.submit(request, s)
        time.sleep(0.01)
        if abort:
            engine.abort(request.request_id)
    for rid, s in sinks.items():
        assert s.done.wait(120), rid
        assert s.num_finals == 1
    return sinks


def assert_all_pages_free_after_clearing(engine: Engine) -> None:
    assert_drained(engine)
    engine.clear_prefix_cache()
    deadline = time.time() + 10
    while engine.stats().prefix_cache_pages and time.time() < deadline:
        time.sleep(0.02)
    st = engine.stats()
    assert (st.kv_pages_in_use, st.prefix_cache_pages, st.prefix_cache_entries) == (0, 0, 0), st


@pytest.mark.parametrize("depth", [1, 2])
def test_greedy_outputs_are_the_same_with_the_cache_on_and_off(ckpt: Path, depth: int) -> None:  # noqa: F811
    plan = _plan(depth)
    outcomes = {}
    # A pool of ~4 requests' pages and 2 entries for 3 images: entries are evicted both
    # for room and for capacity while requests run.
    for cache in (0, 2):
        with make_engine(ckpt, pipeline_depth=depth, max_batch_size=4, prefix_cache_size=cache,
                         num_kv_pages=4 * 49 + 1) as eng:
            outcomes[cache] = _run(eng, plan)
            st = eng.stats()
            if cache:
                assert st.prefix_cache_hits >= 3 and st.prefix_cache_misses >= 3, st
            else:
                assert st.prefix_cache_hits == st.prefix_cache_misses == 0
            assert_all_pages_free_after_clearing(eng)
    aborted = {r.request_id for r, abort in plan if abort}
    for rid, sink in outcomes[0].items():
        if rid not in aborted:
            assert signature(sink.result) == signature(outcomes[2][rid].result), rid


def test_a_repeated_image_reuses_its_prefix_after_its_embedding_was_evicted(ckpt: Path) -> None:  # noqa: F811
    image = png_bytes(77)
    with make_engine(ckpt, prefix_cache_size=4, image_cache_size=1) as eng:
        first = run_all(eng, [Request("a", "query", image, "what is it?", max_tokens=5, temperature=0.0)])
        # another image evicts the embedding; the prefix stays cached
        run_all(eng, [Request("other", "caption", png_bytes(78), max_tokens=2)])
        again = run_all(eng, [Request("b", "query", image, "what is it?", max_tokens=5, temperature=0.0)])
        assert again["b"].result.token_ids == first["a"].result.token_ids
        st = eng.stats()
        assert (st.prefix_cache_hits, st.prefix_cache_misses) == (1, 2)
        assert_all_pages_free_after_clearing(eng)


def test_the_runners_image_mirror_follows_the_embedding_cache_through_cache_hits(ckpt: Path) -> None:  # noqa: F811
    """A prefill on a cached prefix touches no embedding: the mirror must not either
    (X, Y, X-hit, Z with room for two embeddings leaves Y and Z, not X and Z)."""
    images = {name: png_bytes(90 + i) for i, name in enumerate("XYZ")}
    with make_engine(ckpt, prefix_cache_size=4, image_cache_size=2) as eng:
        for i, name in enumerate("XYXZ"):
            run_all(eng, [Request(f"{name}{i}", "caption", images[name], max_tokens=2)])
        assert eng.stats().prefix_cache_hits == 1
        eng.runner.synchronize()
        assert eng.runner._image_keys.keys() == eng.runner.work.image_cache.keys()
        assert eng.runner.has_image(image_key(images["Y"])) and not eng.runner.has_image(image_key(images["X"]))
