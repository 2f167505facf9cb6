"""`vlmclf serve`: put any vlmclf model behind an OpenAI-compatible chat endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from vlmclf.commands.common import (
    DEVICE_HELP,
    DTYPE_HELP,
    at_least,
    fail,
    number_in,
    resolve_hardware,
    use_threads,
)

if TYPE_CHECKING:
    from vlmclf.serve import ServeLimits

API_KEY_VARIABLE = "VLMCLF_SERVE_API_KEY"  # vlmclf.serve.API_KEY_VARIABLE, kept import-free


def serve_command(
    model: Annotated[
        str, typer.Option(help="Any generative model spec (hf:, random:, organism:vlm).")
    ],
    port: Annotated[int, typer.Option(callback=number_in(0, 65535), help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on (IPv4 or IPv6).")] = "127.0.0.1",
    served_name: Annotated[
        str | None, typer.Option(help="Model name clients ask for (default: the spec).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_VARIABLE,
            show_envvar=True,
            help="Require 'Authorization: Bearer KEY' on every request (prefer the variable).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(callback=at_least(1), help="CPU threads torch computes with (default: what "
                     "torch picks)."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Requests answered by one model call.")] = 8,
    batch_window_ms: Annotated[
        float, typer.Option(help="How long to wait for requests to batch with the first.")
    ] = 5.0,
    batch_max_wait_ms: Annotated[
        float, typer.Option(help="Longest wait for requests already being received.")
    ] = 100.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted.")] = 32.0,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image accepted (width x height), checked before decoding.")
    ] = 25_000_000,
    decode_slots: Annotated[int, typer.Option(help="Images decoded at the same time.")] = 2,
    read_timeout: Annotated[
        float, typer.Option(help="Seconds a connection may stall (upload or keep-alive).")
    ] = 30.0,
    head_timeout: Annotated[
        float, typer.Option(help="Seconds for a whole request head (and keep-alive idle).")
    ] = 10.0,
    body_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds for a whole request body [default: 10 + 1 per MiB sent]."),
    ] = None,
    max_connections: Annotated[
        int, typer.Option(help="Open connections; past it idle ones give way, then 503s.")
    ] = 64,
    max_tokens_limit: Annotated[
        int, typer.Option(help="Largest max_tokens a client may ask.")
    ] = 1024,
) -> None:
    """Serve a model at http://HOST:PORT/v1 (chat completions, one image per request)."""
    from vlmclf.run.loading import ModelOptions, load_any_model
    from vlmclf.serve import ChatModelServer, ServeError, ServeLimits
    from vlmclf.serve.listener import is_loopback

    device, dtype = resolve_hardware(model, device, dtype)
    try:
        limits = ServeLimits(
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_pixels=max_pixels,
            decode_slots=decode_slots,
            read_timeout_s=read_timeout,
            head_timeout_s=head_timeout,
            body_timeout_s=body_timeout,
            max_connections=max_connections,
            max_tokens_limit=max_tokens_limit,
            batch_window_ms=batch_window_ms,
            batch_max_wait_ms=batch_max_wait_ms,
            max_batch=max_batch,
        )
        _check_limits(limits)
        # bind first: a port in use is an error before the model spends seconds loading
        server = ChatModelServer(None, served_name or model, host, port, api_key=api_key,
                                 limits=limits)  # fmt: skip
    except (ServeError, ValueError) as err:
        fail(str(err))
    if not api_key and not is_loopback(host):
        typer.secho(
            f"WARNING: listening on {host} without an API key: anyone who can reach this "
            f"address can use the model. Set {API_KEY_VARIABLE} (or --api-key).",
            fg=typer.colors.RED, bold=True, err=True,
        )  # fmt: skip
    use_threads(threads)
    try:
        server.attach(load_any_model(model, ModelOptions(device=device, dtype=dtype)))
    except (ValueError, FileNotFoundError) as err:
        server.shutdown()
        fail(str(err))
    typer.echo(f"serving {server.served_name} at {server.base_url} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


def _check_limits(limits: ServeLimits) -> None:
    """Each limit must be positive; the message names the option."""
    options = {
        "max_body_bytes": "--max-body-mb", "max_pixels": "--max-pixels",
        "decode_slots": "--decode-slots", "read_timeout_s": "--read-timeout",
        "head_timeout_s": "--head-timeout",
        "max_connections": "--max-connections", "max_tokens_limit": "--max-tokens-limit",
        "max_batch": "--max-batch",
    }  # fmt: skip
    for field, option in options.items():
        if not getattr(limits, field) > 0:
            raise ValueError(f"{option} must be positive, got {getattr(limits, field)}")
    if limits.body_timeout_s is not None and not limits.body_timeout_s > 0:
        raise ValueError(f"--body-timeout must be positive, got {limits.body_timeout_s}")
    if not 0 <= limits.batch_window_ms <= limits.batch_max_wait_ms:
        raise ValueError("--batch-window-ms must be 0 or more and at most --batch-max-wait-ms")
