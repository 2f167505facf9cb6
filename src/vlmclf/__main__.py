"""``python -m vlmclf``: the CLI, as torchrun launches it (``torchrun ... -m vlmclf eval ...``)."""

from vlmclf.cli import app

app(prog_name="vlmclf")
