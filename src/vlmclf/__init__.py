"""vlmclf: evaluate vision-language models as image classifiers, side by side with CLIP."""

__version__ = "0.1.0"
