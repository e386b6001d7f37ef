"""Operations: ``trickle-trio cluster`` (HAProxy in front of N servers), supervision.

Modules: ``haproxy`` (the config), ``processes`` (children, ports, probes),
``supervisor`` (restarts with backoff), ``cluster`` (the lifecycle), ``cluster_cli``
(the command line).
"""
