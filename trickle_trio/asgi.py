"""The ASGI app for a plain hypercorn deployment::

    hypercorn 'trickle_trio.asgi:app' --worker-class trio --bind 0.0.0.0:2939

Settings come from ``TRICKLE_*`` environment variables (see ``trickle_trio.config``);
hypercorn's own flags (bind, TLS, workers) stay hypercorn's. Run ONE worker per port: a
channel lives in one process. The registry is created at ASGI lifespan start-up and the
channels are drained at lifespan shutdown; SIGTERM/SIGINT reaching the worker drain the
channels first (see ``trickle_trio.lifecycle``), so hypercorn's graceful timeout finds no
stream left to cut.
"""

from __future__ import annotations

from .config import Settings
from .http.app import create_app
from .lifecycle import install_signal_drain

app = create_app(Settings.from_env())
install_signal_drain(app)
