"""The command line: every command of vlmclf, in the order a user meets them.

Each command lives in ``commands/``: it parses, builds what the lower layers take, calls one
function and prints. No logic lives here.
"""

from __future__ import annotations

import os

import typer

# Our own progress bars say what is happening; transformers' weight-loading bars are noise.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from vlmclf.commands.attribute import attribute_command
from vlmclf.commands.common import CleanErrorsGroup, version_option
from vlmclf.commands.data import data_app
from vlmclf.commands.demo import demo_command
from vlmclf.commands.errors import errors_command
from vlmclf.commands.eval import eval_command
from vlmclf.commands.finetune import finetune_command
from vlmclf.commands.frequency import frequency_command
from vlmclf.commands.organism import organism_app
from vlmclf.commands.probe import probe_command
from vlmclf.commands.rematch import rematch_command
from vlmclf.commands.report import report_command
from vlmclf.commands.reproduce import reproduce_command
from vlmclf.commands.results import export_command, results_command
from vlmclf.commands.serve import serve_command
from vlmclf.commands.sweep import sweep_command
from vlmclf.commands.wikiqa import wikiqa_app

app = typer.Typer(
    cls=CleanErrorsGroup,
    no_args_is_help=True,
    add_completion=False,
    help="Evaluate vision-language models as image classifiers, side by side with CLIP.",
)

app.callback()(version_option)
app.command("eval")(eval_command)
app.command("results")(results_command)
app.command("export")(export_command)
app.add_typer(data_app, name="data")
app.command("demo")(demo_command)
app.command("frequency")(frequency_command)
app.command("probe")(probe_command)
app.command("finetune")(finetune_command)
app.command("sweep")(sweep_command)
app.command("rematch")(rematch_command)
app.command("errors")(errors_command)
app.command("attribute")(attribute_command)
app.command("reproduce")(reproduce_command)
app.command("report")(report_command)
app.add_typer(wikiqa_app, name="wikiqa")
app.command("serve")(serve_command)
app.add_typer(organism_app, name="organism")


if __name__ == "__main__":
    app()
