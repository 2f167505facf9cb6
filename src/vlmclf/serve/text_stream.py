"""Turning token ids into text pieces as they are decoded, for streamed answers.

Two things make this more than ``tokenizer.decode`` of each token: a byte-level tokenizer can
split one character over several tokens (decoding the first alone gives U+FFFD), and the
server's answers are stripped of surrounding whitespace. So a piece is released only once its
characters are complete (decoding a short window of recent tokens, as text-generation-inference
does, so each step costs the same however long the answer is), leading whitespace is dropped,
and trailing whitespace is held back until something follows it. The pieces joined equal
``tokenizer.decode(ids, skip_special_tokens=True).strip()``, the non-streamed answer; ``finish``
sends whatever that comparison says is missing.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("vlmclf.serve")


class TextStream:
    """Text pieces of one answer, token by token."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_offset = 0  # window start: context that makes the next piece decode right
        self._read_offset = 0  # tokens before this are already released
        self._sent = ""  # what the client has received
        self._held = ""  # trailing whitespace, released when something follows it

    def push(self, token_id: int) -> str:
        """The new text that ``token_id`` completes ("" while a character is incomplete)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix_offset : self._read_offset])
        after = self._decode(self.ids[self._prefix_offset :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._release(after[len(before) :])

    def finish(self, text: str) -> str:
        """What is left to send so the pieces add up to ``text`` (the stripped answer)."""
        if not text.startswith(self._sent):
            logger.warning("streamed text diverged from the answer: %r vs %r", self._sent, text)
            return ""
        rest = text[len(self._sent) :]
        self._sent = text
        return rest

    def _release(self, piece: str) -> str:
        candidate = self._held + piece
        if not self._sent:
            candidate = candidate.lstrip()
        visible = candidate.rstrip()
        self._held = candidate[len(visible) :]
        self._sent += visible
        return visible

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
