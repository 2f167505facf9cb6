"""`vlmclf serve`: put any vlmclf model behind an OpenAI-compatible chat endpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from vlmclf.commands.common import number_in


def serve_command(
    model: Annotated[
        str, typer.Option(help="Any generative model spec (hf:, random:, organism:vlm).")
    ],
    port: Annotated[int, typer.Option(callback=number_in(0, 65535), help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    served_name: Annotated[
        str | None, typer.Option(help="Model name clients ask for (default: the spec).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16, bfloat16.")] = "float32",
) -> None:
    """Serve a model at http://HOST:PORT/v1 (chat completions, one image per request)."""
    from vlmclf.loading import ModelOptions, load_any_model
    from vlmclf.serve import ChatModelServer

    server = ChatModelServer(
        load_any_model(model, ModelOptions(device=device, dtype=dtype)),
        served_name or model,
        host,
        port,
    )
    typer.echo(f"serving {served_name or model} at {server.base_url} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
