"""The tree scorer keeps each chunk's trie and tree mask for the next image (issue 25, item 11:
~12% of CPU scoring time per image). A kept mask is the one a fresh build gives, and a scorer
that reuses them scores exactly as a fresh one, image after image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from test_likelihood import NAMES, make_batch, spec_for

from vlmclf.methods.likelihood.method import LikelihoodMethod
from vlmclf.methods.likelihood.trie import cached_trie
from vlmclf.models import load_model


def test_kept_masks_and_tries_score_as_fresh_ones():
    model = load_model("random:llava", dtype="float32", seed=0)
    rng = np.random.default_rng(4)
    shape = (36, 48, 3)
    pictures = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(3)]
    kept = LikelihoodMethod(model, NAMES, spec_for("llava"), strategy="tree")
    reused = [kept.predict(make_batch([p], [0]))[0] for p in pictures]  # masks built on the first
    scorer = kept.target.scorer
    assert scorer._masks  # noqa: SLF001 - what is kept is what is checked
    for (chunk, length), mask in scorer._masks.items():  # noqa: SLF001
        assert torch.equal(mask, cached_trie(chunk).attention_mask(length, mask.dtype))
    for picture, prediction in zip(pictures, reused, strict=True):
        fresh = LikelihoodMethod(model, NAMES, spec_for("llava"), strategy="tree")
        again = fresh.predict(make_batch([picture], [0]))[0]
        assert again.extra["token_logprobs"] == prediction.extra["token_logprobs"]
