"""The ASGI app for a plain hypercorn deployment::

    hypercorn 'trickle_trio.asgi:app' --worker-class trio --bind 0.0.0.0:2939

Settings come from the TOML file named by ``TRICKLE_CONFIG`` and ``TRICKLE_*`` environment
variables (see ``trickle_trio.config``); hypercorn's own flags (bind, TLS, workers,
access log) stay hypercorn's. Run ONE worker per port: a channel lives in one process.
The registry is created at ASGI lifespan start-up. Before hypercorn stops serving,
whatever asked it to (SIGTERM to the parent, the process group or the worker; SIGINT
where it is not ignored), every channel is deleted (see ``trickle_trio.lifecycle``), so
hypercorn's graceful timeout finds no stream to cut.
"""

from __future__ import annotations

import logging

from . import __version__, lifecycle
from .config import HYPERCORN_OWNED, Settings, load_settings
from .http.app import app_state, create_app
from .logs import configure_logging
from .server import tune_gc


def log_startup(settings: Settings, sources: dict[str, str]) -> None:
    """One line for the app's settings; a warning for each one hypercorn decides instead
    (the address, TLS, timeouts, the access log: never reported as if it applied)."""
    log = logging.getLogger("trickle_trio")
    log.info(
        "trickle-trio %s app loaded under hypercorn %s (bind, TLS, timeouts and access "
        "log are hypercorn's flags)",
        __version__,
        settings.summary(sources, serve=False),
    )
    for name in sorted(HYPERCORN_OWNED & sources.keys()):
        log.warning(
            "setting ignored under plain hypercorn name=%s source=%s: use hypercorn's own flags",
            name,
            sources[name].replace(" ", ":"),
        )


_settings, _sources = load_settings()
configure_logging(_settings)
log_startup(_settings, _sources)
app = create_app(_settings)
lifecycle.install(app, app_state(app))
if _settings.gc_tuning:
    tune_gc()
