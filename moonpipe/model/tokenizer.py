"""Tokenizer: a thin typed wrapper over HuggingFace ``tokenizers`` (``tokenizer.json``).

Prompt templates are token-id lists (``TokenizerConfig.templates``), the same for real and
synthetic checkpoints; only user text (questions, object names) goes through ``encode``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from moonpipe.errors import CheckpointError

__all__ = ["Tokenizer"]


class Tokenizer:
    """Encode user text to ids and decode generated ids back to text."""

    def __init__(self, hf: HFTokenizer) -> None:
        # User text is data: "<|endoftext|>" typed in a question must not become the eos id.
        hf.encode_special_tokens = True
        self._hf = hf

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise CheckpointError(f"{path}: tokenizer.json not found in the checkpoint directory")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise CheckpointError(f"{path}: cannot load tokenizer: {exc}") from exc

    @property
    def hf(self) -> HFTokenizer:
        return self._hf

    @property
    def vocab_size(self) -> int:
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def id_to_token(self, token_id: int) -> str | None:
        tok = self._hf.id_to_token(token_id)
        return None if tok is None else str(tok)

    def decode_token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (used to build vocabulary masks)."""
        return self.decode([token_id]).encode("utf-8", errors="surrogatepass")
