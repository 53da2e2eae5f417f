"""``moonpipe gpu-check``: everything a lent GPU must answer, prepared on CPU.

``plan.py`` the steps (each a subprocess with its own time budget), ``runner.py`` runs
them one after another, continuing past failures, and writes ``gpu-check.json`` and a
log; ``env.py`` and ``kernels.py`` are the two steps that have no other command. Every
module here imports only what the GPU machine has (torch, numpy, triton, pytest): no
tqdm, matplotlib or tritonclient. docs/gpu.md explains the whole check.
"""
