"""The local Prefect server that the `segment` commands report to, and the `segment server` commands.

- local.py: `LocalServer`, one long-lived `prefect server start` in the background, and `ensure_api_url()`,
  which finds or starts it. Its docstring lists the environment variables (PREFECT_API_URL,
  SEGMENT_PREFECT_SERVER, SEGMENT_SERVER_HOME, SEGMENT_SERVER_START_TIMEOUT).
- commands.py: `segment server start|stop|status` (`server_app`).
- processes.py: the server's processes, read from Linux /proc.

Nothing here imports Prefect. Prefect reads its settings when it is imported, so commands call
`ensure_api_url()` before importing it.
"""

from customer_segments.flows.server.commands import server_app
from customer_segments.flows.server.local import (
    LocalServer,
    ServerError,
    configured_api_url,
    ensure_api_url,
    server_home,
)

__all__ = ["LocalServer", "ServerError", "configured_api_url", "ensure_api_url", "server_app", "server_home"]
