"""trickle-trio's own HTTP/1.1 server: an ASGI server on trio and httptools.

It serves any ASGI app (the trickle app: its Quart routes and its segment layer) with
one task per connection, the request bodies and disconnects read by one reactor task
for every connection, and the trickle extensions of :mod:`trickle_trio.http.extensions`
(a POST body written straight into a segment, chunks written without joins, pushes from
the publisher's task, a cancel scope for a client that leaves). It imports nothing of
hypercorn, h11 or Quart; stock hypercorn keeps serving the same app where this server
is not used (``fast_path = false``, or ``hypercorn trickle_trio.asgi:app``).

Modules: ``parser`` (request heads and bodies, httptools), ``connection`` (one
connection: its requests, reads and the ASGI calls), ``output`` (its responses: heads,
framing, writes, pushes, reset and close), ``heads`` (status lines, Date), ``reactor``
(the shared reader), ``server`` (listeners, TLS, shutdown).
"""

from .server import serve

__all__ = ["serve"]
