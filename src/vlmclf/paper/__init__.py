"""The paper and the thesis as data: protocols (settings per experiment and family), the
published numbers, and ``reproduce``, which runs their tables with vlmclf's own commands."""
