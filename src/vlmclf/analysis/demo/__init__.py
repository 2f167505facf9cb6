"""The demo: the paper's story on the organism, each finding with its 95% interval.

Everything runs through the same code paths as real checkpoints (runner, store, probe,
likelihood re-scoring, frequency statistics), on Fashion-MNIST's test split:

1. (a) The VLM classifies worse than the CLIP on the same image encoder, by open-world
   generation, by class-name likelihood (the paper protocol's answer prefix) and by likelihood
   with classifier-free guidance; (b) likelihood beats generation and CFG beats plain
   likelihood, as in the paper's Table 2 (tested, not assumed).
2. A linear probe on the VLM's last-layer hidden states, trained to convergence with a weight
   decay chosen on validation, recovers most of the gap.
3. Fine-tuning the projector with the text-generation objective (``organism:vlm-finetuned``,
   shipped with its training record) reaches CLIP's level.
4. As the label set shrinks (K offered classes) the gap narrows and the VLM's error relative to
   CLIP's grows (the paper's Figure 2).
5. The frequency interventions, on the same images: an organism trained on the Zipf law with
   its class ranking reversed (``organism:vlm-reversed``: does each class's accuracy move with
   the factor its captions changed by?) and one whose projector saw every class equally often
   (``organism:vlm-uniform``).

A verdict "holds" only when its interval excludes the null; otherwise it says what was seen.
``run.py`` runs and derives, ``findings.py`` judges, ``rescoring.py`` re-scores stored
predictions (CFG, label-set sizes), ``report.py`` writes the figures, Markdown and HTML page.
"""
