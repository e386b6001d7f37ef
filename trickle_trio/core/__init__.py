"""Sans-IO core of the trickle protocol: wire constants, seq rules, window state, errors.

Nothing under ``trickle_trio.core`` imports trio, quart, hypercorn or h11; it is plain
data and decisions, tested with plain synchronous tests.
"""
