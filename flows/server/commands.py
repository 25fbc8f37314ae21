"""`segment server start|stop|status`: the commands for the local Prefect server (see local.py).

Like the rest of this package, this module does not import Prefect.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from customer_segments.flows.server.local import LocalServer, ServerError


# --- `segment server ...` ----------------------------------------------------------------------

server_app = typer.Typer(
    help="The local Prefect server that commands report to when PREFECT_API_URL is not set.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _progress_to_stderr(line: str) -> None:
    typer.echo(line, err=True)


@server_app.command("start")
def start_command(
    open_browser: bool = typer.Option(False, "--open", help="Open the UI in a web browser as well."),
) -> None:
    """Start the local Prefect server in the background, or find it running. Prints its addresses."""
    server = LocalServer()
    try:
        api_url = server.ensure(progress=_progress_to_stderr)
    except ServerError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    info = server.status()
    typer.echo(f"UI:   {info['ui_url'] or api_url.removesuffix('/api')}")
    typer.echo(f"API:  {api_url}")
    typer.echo(f"Home: {server.home}")
    typer.echo(f"Log:  {server.log}")
    if (env_url := os.environ.get("PREFECT_API_URL")) and env_url != api_url:
        typer.echo(f"Note: PREFECT_API_URL is set to {env_url}; commands report to that server, not this one.")
    if open_browser:
        import webbrowser

        ui = info["ui_url"] or api_url.removesuffix("/api")
        if not webbrowser.open(ui):
            typer.echo(f"(no web browser here: open {ui} yourself)")


@server_app.command("stop")
def stop_command() -> None:
    """Stop the local Prefect server and its processes."""
    server = LocalServer()
    info = server.status()
    if server.stop():
        typer.echo(f"Stopped the local Prefect server (pid {info['pid']}, {info['api_url']}) of {server.home}")
    else:
        typer.echo("No local server was running.")


@server_app.command("status")
def status_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show whether the local Prefect server runs, and where. Exits with code 0 if it runs, else 3."""
    info = LocalServer().status()
    if json_out:
        typer.echo(json.dumps(info))
    elif info["running"]:
        typer.echo(f"Running: pid {info['pid']}, UI {info['ui_url']}, API {info['api_url']}, "
                   f"Prefect {info['prefect_version']}, since {info['started_at']}")
        typer.echo(f"Home: {info['home']}")
        typer.echo(f"Log:  {info['log']}")
        warm = info.get("warm_start_pid")
        typer.echo(f"Warm starter: pid {warm}" if warm else "Warm starter: not running (runs start cold)")
    else:
        why = f" (recorded state is stale: {info['problem']})" if info["stale"] else ""
        typer.echo(f"Not running{why}. Home: {info['home']}")
    raise typer.Exit(0 if info["running"] else 3)
