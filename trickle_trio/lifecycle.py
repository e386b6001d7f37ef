"""Drain on SIGTERM/SIGINT inside a plain hypercorn worker.

hypercorn's trio worker stops on SIGINT (KeyboardInterrupt) or its parent's shutdown
event; either way it cuts open streams after ``graceful_timeout`` and only then runs the
ASGI lifespan shutdown. So the worker catches the signal itself, deletes every channel
(subscribers end with ``Lp-Trickle-Closed``, preconnects are released), and then lets
hypercorn shut down as it would have (see ``_drain_on_signal``).
"""

from __future__ import annotations

import logging
import signal
import threading

import trio
from quart_trio import QuartTrio

from .http.app import app_state

logger = logging.getLogger(__name__)


def install_signal_drain(app: QuartTrio) -> None:
    """Make ``app``'s lifespan drain the channels on SIGTERM/SIGINT, then re-raise."""

    @app.before_serving
    async def start_signal_drain() -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers only work in the main thread
        app.nursery.start_soon(_drain_on_signal, app)


async def _drain_on_signal(app: QuartTrio) -> None:
    state = app_state(app)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("shutdown signal=%s: draining channels", signal.Signals(signum).name)
            break
    state.draining = True
    if state.registry is not None:
        await state.registry.close_all()
    # The receiver is closed again. If trio handles SIGINT (hypercorn --workers 0 run
    # from a shell), hand the signal on as KeyboardInterrupt: raised from a run-loop
    # callback, trio delivers it to its main task, hypercorn's serve loop, which treats
    # it as "shut down". In a multi-worker deployment SIGINT is ignored in workers and
    # the parent process, which got the signal too, stops this worker itself.
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        logger.info("channels drained; hypercorn's parent process stops this worker")
        return
    token = trio.lowlevel.current_trio_token()
    token.run_sync_soon(signal.raise_signal, signal.SIGINT)
