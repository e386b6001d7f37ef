"""Benchmarks for trickle servers: ``python -m bench {fanout,live,small,join,all}``.

Layout: ``cli`` (arguments, output) -> ``runner`` (targets x configs x reps, find-max) ->
``workers`` (spawned load-generator processes) -> ``scenarios/`` (what each process
does) -> ``client`` (a minimal HTTP/1.1 client on raw trio sockets). ``servers`` starts
or finds the servers under test, ``procstat`` reads their CPU and memory from /proc,
``report`` writes the table, JSON and plots; ``baseline_relay`` is the bare relay the
figures can be compared with. See README.md.
"""
