"""HTTP: the raw-ASGI segment layer (``streams``) in front of the quart-trio app (``app``)."""
