"""GPU kernels for the decode step, in Triton language (tested on CPU by the interpreter).

``decode_attention.py`` paged split-KV decode attention; ``pointwise.py`` the fused
pointwise kernels; ``ops.py`` registers them as ``torch.ops.moonpipe.*``; ``decoders.py``
the torch / triton / fused decode steps; ``select.py`` picks one (``decode_kernels``);
``count.py`` counts the launches of a step. Importing this package imports no Triton.
"""
