"""Token-level grammar of segment's SVG path text, compiled once against the vocabulary.

The path is generated as plain text tokens, so the grammar lives on characters and is
lifted to tokens: a token is allowed in a state when *all* its characters are accepted
from that state, and the state after the token is the state after its last character.
Byte-level BPE tokens such as ``" 12"``, ``"0,"`` or ``" L"`` cross element boundaries;
the character automaton handles that for free.

Language (what the generator may produce; ``svg.parse_path`` accepts a superset)::

    path   := [" "] "M" group (cmd group)*   -- "m" / lower-case letters are accepted too
    group  := number{n(cmd)} ( number{n(cmd)} )*   -- SVG implicit repetition
    cmd    := M L (2 numbers)  C (6)  Q (4)  Z (0, no repetition)
    number := ["-"] digit{1,3}                   -- integers on the 960-unit viewbox
    separators: at most two of " " / "," between elements (so "10, 20" is fine)

``eos`` is allowed exactly where the path may end: after a complete command group
(possibly followed by separators), including inside the last number of a group.

Compilation: every token decodes to a string; tokens whose characters all belong to the
path alphabet are grouped by their *class string* (digits -> ``d``, separators -> ``s``,
...); the automaton runs once per (state, class string), a few hundred strings for a
51,200-token vocabulary. Per state the allowed ids form one ``VocabMask``; states with
equal allowed sets share a mask. At run time ``advance`` is two tuple look-ups.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import numpy as np

from moonpipe.config import TokenizerConfig
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.step import VocabMask

__all__ = ["DEAD", "PathGrammar", "compile_path_grammar"]

DEAD = -1
MASK_PREFIX = "segment.path."

# State tuples of the character automaton (see module docstring):
#   ("start", num_spaces) | ("arg", group, index, phase) | ("done", group, phase)
# group: "P" (M/L, 2 numbers), "C" (6), "Q" (4), "Z" (done only)
# phase: "s0" "s1" "s2" (separators seen), "sign", "d1" "d2" "d3" (digits in the number)

_NUM_ARGS = {"P": 2, "C": 6, "Q": 4}
_LETTER_GROUP = {"M": "P", "L": "P", "C": "C", "Q": "Q"}
_NEXT_SEP = {"s0": "s1", "s1": "s2"}
_NEXT_DIGIT = {"d1": "d2", "d2": "d3"}
_CLASS_TABLE = str.maketrans(
    {**{str(d): "d" for d in range(10)}, " ": "s", ",": "k", "-": "n",
     "M": "M", "m": "M", "L": "L", "l": "L", "C": "C", "c": "C", "Q": "Q", "q": "Q",
     "Z": "Z", "z": "Z"}
)
_PATH_CHARS = re.compile(r"[0-9 ,\-MmLlCcQqZz]+")


def _step(state: tuple, c: str) -> tuple | None:
    """One character class ``c`` from ``state``; ``None`` when the path would break."""
    kind = state[0]
    if kind == "start":
        if c == "M":
            return ("arg", "P", 0, "s0")
        if c == "s" and state[1] == 0:
            return ("start", 1)  # one leading space (" M" is a common BPE token)
        return None
    if c == "k":
        c = "s"  # a comma separates like a space everywhere after the start
    if kind == "arg":
        _, group, index, phase = state
        if phase in ("d1", "d2", "d3"):
            if c == "d":
                nxt = _NEXT_DIGIT.get(phase)
                return None if nxt is None else ("arg", group, index, nxt)
            # The number ends here; the character starts whatever follows it.
            if index + 1 < _NUM_ARGS[group]:
                return _step(("arg", group, index + 1, "s0"), c)
            return _step(("done", group, "s0"), c)
        if phase == "sign":
            return ("arg", group, index, "d1") if c == "d" else None
        if c == "d":
            return ("arg", group, index, "d1")
        if c == "n":
            return ("arg", group, index, "sign")
        if c == "s":
            nxt = _NEXT_SEP.get(phase)
            return None if nxt is None else ("arg", group, index, nxt)
        return None  # a command letter before the group is complete
    # kind == "done": a complete group, optionally followed by separators
    _, group, phase = state
    if c == "s":
        nxt = _NEXT_SEP.get(phase)
        return None if nxt is None else ("done", group, nxt)
    if c in _LETTER_GROUP:
        return ("arg", _LETTER_GROUP[c], 0, "s0")
    if c == "Z":
        return ("done", "Z", "s0")
    if group == "Z":
        return None  # Z takes no numbers
    if c == "d":
        return ("arg", group, 0, "d1")  # implicit repetition of the command
    if c == "n":
        return ("arg", group, 0, "sign")
    return None


def _accepting(state: tuple) -> bool:
    if state[0] == "done":
        return True
    return state[0] == "arg" and state[3] in ("d1", "d2", "d3") and state[2] == _NUM_ARGS[state[1]] - 1


def _run(state: tuple, classes: str) -> tuple | None:
    for c in classes:
        nxt = _step(state, c)
        if nxt is None:
            return None
        state = nxt
    return state


@dataclass(frozen=True, slots=True)
class PathGrammar:
    """The compiled path grammar: token classes, transitions, masks (all immutable).

    ``token_class[id]``: class of a token (0 = never allowed: specials, other characters);
    ``transitions[state][class]``: next state or ``DEAD``; ``accepting[state]``: eos allowed;
    ``state_mask[state]``: index into ``masks`` of the state's allowed ids.
    """

    token_class: tuple[int, ...]
    transitions: tuple[tuple[int, ...], ...]
    accepting: tuple[bool, ...]
    state_mask: tuple[int, ...]
    masks: tuple[VocabMask, ...]
    start: int
    eos_id: int

    def next_state(self, state: int, token: int) -> int:
        """State after ``token`` (``DEAD`` for eos, unknown ids and grammar violations)."""
        if state == DEAD or not 0 <= token < len(self.token_class):
            return DEAD
        return self.transitions[state][self.token_class[token]]

    def mask_name(self, state: int) -> str:
        return self.masks[self.state_mask[state]].name


def _decode_vocab(tokenizer: Tokenizer) -> list[str]:
    """Each id decoded on its own (one batched call; same as ``decode([id])`` per id)."""
    ids = [[i] for i in range(tokenizer.vocab_size)]
    return [str(s) for s in tokenizer.hf.decode_batch(ids, skip_special_tokens=False)]


def compile_path_grammar(tokenizer: Tokenizer, tok_cfg: TokenizerConfig) -> PathGrammar:
    """Scan the vocabulary once and build the grammar's tables and vocabulary masks."""
    special = {tok_cfg.bos_id, tok_cfg.eos_id, tok_cfg.answer_id, tok_cfg.thinking_id,
               tok_cfg.coord_id, tok_cfg.size_id, tok_cfg.start_ground_points_id,
               tok_cfg.end_ground_id}
    class_ids: dict[str, int] = {}
    token_class = np.zeros(tokenizer.vocab_size, dtype=np.int64)  # (V,)
    for tid, text in enumerate(_decode_vocab(tokenizer)):
        if tid in special or not _PATH_CHARS.fullmatch(text):
            continue
        token_class[tid] = class_ids.setdefault(text.translate(_CLASS_TABLE), len(class_ids) + 1)
    class_strings = ["", *class_ids]  # index = class id; 0 is the dead class

    # Reachable states: breadth-first over single characters from the start state.
    start: tuple = ("start", 0)
    index: dict[tuple, int] = {start: 0}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for c in "dsknMLCQZ":
            nxt = _step(state, c)
            if nxt is not None and nxt not in index:
                index[nxt] = len(index)
                queue.append(nxt)
    states = list(index)

    transitions: list[tuple[int, ...]] = []
    for state in states:
        row = [DEAD]
        for classes in class_strings[1:]:
            nxt = _run(state, classes)
            row.append(DEAD if nxt is None else index[nxt])
        transitions.append(tuple(row))
    accepting = tuple(_accepting(s) for s in states)

    masks: list[VocabMask] = []
    mask_of: dict[tuple[int, ...], int] = {}
    state_mask: list[int] = []
    for sid, trans_row in enumerate(transitions):
        valid_class = np.asarray(trans_row) != DEAD  # (C,)
        valid_class[0] = False
        allowed = np.nonzero(valid_class[token_class])[0].tolist()
        if accepting[sid] or not allowed:
            # eos where the path may end; also the only way out of a state this
            # vocabulary cannot continue (finish() then reports the broken path).
            allowed.append(tok_cfg.eos_id)
        key = tuple(sorted(set(allowed)))
        if key not in mask_of:
            mask_of[key] = len(masks)
            masks.append(VocabMask(name=f"{MASK_PREFIX}{len(masks)}", allowed_ids=key))
        state_mask.append(mask_of[key])

    return PathGrammar(
        token_class=tuple(token_class.tolist()),
        transitions=tuple(transitions),
        accepting=accepting,
        state_mask=tuple(state_mask),
        masks=tuple(masks),
        start=0,
        eos_id=tok_cfg.eos_id,
    )
