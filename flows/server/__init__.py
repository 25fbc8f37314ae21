"""The local Prefect server that the `segment` commands report to, and the `segment server` commands.

- local.py: `LocalServer`, one long-lived `prefect server start` in the background, and `ensure_api_url()`,
  which finds or starts it. Its docstring lists the environment variables (PREFECT_API_URL,
  SEGMENT_PREFECT_SERVER, SEGMENT_SERVER_HOME, SEGMENT_SERVER_START_TIMEOUT, SEGMENT_WARM_START).
- commands.py: `segment server start|stop|status` (`server_app`).
- processes.py: the server's processes, read from Linux /proc.
- The warm starter beside the server: tasks/runtime/warm_start.py.

Nothing here imports Prefect. Prefect reads its settings when it is imported, so commands call
`ensure_api_url()` before importing it. The names below load on first use, so that a command that
only needs local.py (where the server's folder is) does not import the CLI's libraries.
"""

import importlib

_WHERE = {"server_app": "commands", "LocalServer": "local", "ServerError": "local",
          "configured_api_url": "local", "ensure_api_url": "local", "server_home": "local"}

__all__ = ["LocalServer", "ServerError", "configured_api_url", "ensure_api_url", "server_app", "server_home"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
