"""query: ``prefix + question + suffix + suffix``, answered as plain text (§7.1).

The question is tokenised with no leading space; without reasoning the reference
appends ``suffix`` twice (the prompt ends ``..., 3, 3``).
"""

from __future__ import annotations

from moonpipe.config import TokenizerConfig
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.request import Request

__all__ = ["query_prompt_ids"]


def query_prompt_ids(request: Request, tokenizer: Tokenizer, tok_cfg: TokenizerConfig) -> list[int]:
    """Prompt ids of a query request."""
    template = tok_cfg.templates["query"]
    suffix = [int(i) for i in template["suffix"]]
    return [int(i) for i in template["prefix"]] + tokenizer.encode(request.prompt) + suffix + suffix
