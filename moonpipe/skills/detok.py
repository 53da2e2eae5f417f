"""Incremental detokenisation for streaming: text deltas that never split a character.

Prefix-offset technique: decode only a short window of recent ids, ``ids[prefix:]``,
and compare it with the already-emitted part of the window, ``ids[prefix:read]``. A
window whose text ends in U+FFFD is an incomplete UTF-8 sequence (byte-level BPE splits
multi-byte characters across tokens): hold it back until more ids arrive. Decoding a
window that starts one emitted chunk early keeps decoders that treat the first token
specially (leading-space stripping) consistent with decoding the whole text.

Invariant: ``"".join(deltas) + flush() == tokenizer.decode(all_ids)``. After
``MAX_HOLD`` held ids the window is cut at the latest complete character; only garbage
(invalid UTF-8 ending mid-sequence at every one of the last ids, which a real model
does not produce) is emitted as is, which may later differ in its replacement chars.

Why not ``tokenizers.decoders.DecodeStream`` (in the pinned tokenizers): step by step it
emits the same deltas on real text (tested), but it has no flush, so a request cut
mid-character by max_tokens or a cancellation would lose its held tail (in our test
text, about 4 cuts in 10 end mid-character), and it holds invalid byte runs without
bound. Wrapping it with a flush and a bound would be as much code as this.
"""

from __future__ import annotations

from moonpipe.model.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of generated ids into text deltas (one per ``push``)."""

    MAX_HOLD = 8  # ids held back at most while the text ends mid-character

    __slots__ = ("_ids", "_prefix", "_prefix_text", "_read", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: ids[prefix:read] were emitted already
        self._read = 0
        self._prefix_text = ""  # decode(ids[prefix:read]), cached

    @property
    def num_ids(self) -> int:
        return len(self._ids)

    def push(self, ids: list[int]) -> str:
        """Append ``ids``; return the newly completed text (possibly empty)."""
        if not ids:
            return ""
        self._ids.extend(ids)
        end = len(self._ids)
        text = self._tokenizer.decode(self._ids[self._prefix:])
        if not text.endswith(_REPLACEMENT):
            return self._emit(text, end)
        if end - self._read < self.MAX_HOLD:
            return ""  # the last character is not complete yet
        # Keep the window bounded: emit up to the latest clean cut. An incomplete UTF-8
        # tail is at most 3 bytes, so a clean cut lies within the last 3 ids unless the
        # output is garbage (then everything goes out as is).
        for cut in range(end - 1, max(self._read, end - 4), -1):
            head = self._tokenizer.decode(self._ids[self._prefix:cut])
            if not head.endswith(_REPLACEMENT):
                return self._emit(head, cut)
        return self._emit(text, end)

    def flush(self) -> str:
        """Whatever is still held back (call once, at the end of the request)."""
        if self._read == len(self._ids):
            return ""
        return self._emit(self._tokenizer.decode(self._ids[self._prefix:]), len(self._ids))

    def _emit(self, text: str, end: int) -> str:
        """Emit ``text`` = decode(ids[prefix:end]) beyond what was sent; move the window."""
        if not text.startswith(self._prefix_text):
            # The decoder changed earlier text (not the case for byte-level BPE): emit
            # only what follows the common prefix so no character is sent twice.
            common = 0
            for a, b in zip(text, self._prefix_text, strict=False):
                if a != b:
                    break
                common += 1
            delta = text[common:]
        else:
            delta = text[len(self._prefix_text):]
        self._prefix = self._read
        self._read = end
        self._prefix_text = self._tokenizer.decode(self._ids[self._prefix:self._read])
        return delta
