"""caption: ``templates.caption[length]`` after the image, answered as plain text (§7.1)."""

from __future__ import annotations

from moonpipe.config import TokenizerConfig
from moonpipe.request import Request

__all__ = ["caption_prompt_ids"]


def caption_prompt_ids(request: Request, tok_cfg: TokenizerConfig) -> list[int]:
    """Prompt ids of a caption request (``Request`` already validated ``length``)."""
    return [int(i) for i in tok_cfg.templates["caption"][request.length]]
