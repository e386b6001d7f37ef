"""Drain before hypercorn stops, inside a plain hypercorn deployment (``trickle_trio.asgi``).

hypercorn's trio worker stops when its ``shutdown_trigger`` returns (multi-worker: its
parent process set the shared shutdown event, after SIGTERM/SIGINT/SIGHUP reached the
parent), on KeyboardInterrupt (``--workers 0``, when trio handles SIGINT) or after
``--max-requests``. Each way it closes the listener, cuts the streams still open after
``graceful_timeout`` (a subscriber sees an incomplete chunked body, a waiting request a
500) and only then runs the ASGI lifespan shutdown: too late to end streams cleanly.

So :func:`install` wraps the function hypercorn's worker runs (``worker_serve``) and hands
it a trigger of its own. That trigger returns, and hypercorn then shuts down as it would
have, only after every channel of the app is deleted (subscribers end with
``Lp-Trickle-Closed``, idle preconnects are released); it starts the drain on whichever
comes first:

* hypercorn's own trigger (the parent's shutdown event), when hypercorn passed one: a
  signal to the parent only (``kill PID``, ``docker stop``, Kubernetes), or a reload;
* SIGTERM to this process: a signal to the whole process group (systemd), to the worker
  only, or to ``hypercorn --workers 0``;
* SIGINT to this process, unless it is ignored here. hypercorn's parent ignores SIGINT in
  its workers (it stops them itself), and a shell ignores it for background jobs
  (``cmd &``): an ignored SIGINT stays ignored, and SIGTERM still drains.

Nothing here guesses the worker's situation from signal dispositions: whether a parent
will stop this worker is whether hypercorn handed its worker a trigger. A worker that
drained on its own SIGTERM stops; hypercorn's parent then starts a fresh one (as after
``--max-requests``), and a parent that is itself stopping does not.

What happens on cancellation: the trigger runs in hypercorn's serve nursery; if that is
cancelled first (KeyboardInterrupt, ``--max-requests``), the drain is abandoned and the
app's lifespan shutdown deletes the channels instead.
"""

from __future__ import annotations

import inspect
import logging
import signal
import weakref
from collections.abc import Awaitable, Callable
from functools import partial, wraps
from typing import Any

import hypercorn.trio.run as hypercorn_run
import trio

from .http.state import ServerState

logger = logging.getLogger(__name__)

Trigger = Callable[[], Awaitable[None]]

#: The apps (as given to hypercorn) whose channels the wrapped worker drains.
_APPS: weakref.WeakKeyDictionary[Any, ServerState] = weakref.WeakKeyDictionary()
_WRAPPED = "__trickle_drain__"


def install(app: Any, state: ServerState) -> bool:
    """Drain ``state``'s channels before hypercorn's trio worker stops serving ``app``.

    Idempotent. Returns False, and leaves hypercorn alone (the channels are then deleted
    at lifespan shutdown, after hypercorn's graceful timeout), when the installed
    hypercorn's ``worker_serve`` does not take a ``shutdown_trigger``.
    """
    _APPS[app] = state
    original = hypercorn_run.worker_serve
    if getattr(original, _WRAPPED, False):
        return True
    if "shutdown_trigger" not in inspect.signature(original).parameters:
        logger.warning("drain before shutdown off: hypercorn's worker_serve has no trigger")
        return False

    @wraps(original)
    async def worker_serve(
        app: Any, config: Any, *, shutdown_trigger: Trigger | None = None, **kwargs: Any
    ) -> None:
        state = _APPS.get(getattr(app, "app", app))  # hypercorn wraps the app (ASGIWrapper)
        if state is not None:
            shutdown_trigger = partial(drain_then_stop, state, shutdown_trigger)
        await original(app, config, shutdown_trigger=shutdown_trigger, **kwargs)

    setattr(worker_serve, _WRAPPED, True)
    # hypercorn's trio_worker looks the name up when it runs, after it imported the app.
    setattr(hypercorn_run, "worker_serve", worker_serve)  # ruff: ignore[set-attr-with-constant]
    return True


def drain_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, and SIGINT unless this process ignores it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGINT)


async def drain_then_stop(state: ServerState, parent_trigger: Trigger | None) -> None:
    """Wait for a stop request (see the module docstring), delete every channel, return.

    Returns once every channel is deleted; hypercorn then stops serving. Cancelled while
    waiting or draining: returns nothing, leaves the rest to the lifespan shutdown.
    """
    reason = await wait_for_stop(parent_trigger)
    logger.info("shutdown %s: draining channels", reason)
    logger.info("drained channels=%d", await state.drain())


async def wait_for_stop(parent_trigger: Trigger | None) -> str:
    """Return what asked this worker to stop: a signal, or hypercorn's ``parent_trigger``.

    Cancellation: the signal receiver is removed; nothing was asked to stop.
    """
    reason = ""
    with trio.open_signal_receiver(*drain_signals()) as signals:
        async with trio.open_nursery() as nursery:

            async def first_signal() -> None:
                nonlocal reason
                async for signum in signals:
                    reason = f"signal={signal.Signals(signum).name}"
                    nursery.cancel_scope.cancel()
                    return

            async def parent_asked(trigger: Trigger) -> None:
                nonlocal reason
                await trigger()
                reason = "requested=parent"
                nursery.cancel_scope.cancel()

            nursery.start_soon(first_signal)
            if parent_trigger is not None:
                nursery.start_soon(parent_asked, parent_trigger)
    return reason
