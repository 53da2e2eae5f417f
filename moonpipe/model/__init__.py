"""Moondream2 in PyTorch: pure tensor code the engine drives.

Modules: ``image`` (decode + overlapping crops), ``vision``, ``text`` (paged-KV prefill and
decode), ``paged`` (page-table addressing), ``region``, ``moondream`` (``MoondreamModel``),
``weights`` (safetensors loading, random models), ``checkpoint`` / ``init`` /
``synth_tokenizer`` (synthetic checkpoints), ``generate`` (single-request greedy reference
loops) and ``golden`` (``moonpipe golden-check``). Submodules are imported explicitly; this
package imports nothing so ``moonpipe --help`` stays fast.
"""
