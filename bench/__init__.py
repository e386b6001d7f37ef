"""Benchmarks for trickle servers: ``python -m bench {fanout,live,small,join,all}``.

Layout: ``cli`` (arguments, output) -> ``runner`` (targets x configs x reps, find-max) ->
``workers`` (spawned load-generator processes) -> ``scenarios/`` (what each process
does; ``scenarios/engine`` drives live channels) -> ``client`` (a minimal async HTTP/1.1
client on raw trio sockets) and ``reactor`` (its synchronous many-socket counterpart).
``servers`` starts or finds the servers under test, ``procstat`` reads their CPU and
memory (psutil), ``report`` writes the table (with a ratio column against the
``reference`` target, go-livepeer's own server), JSON and plots; ``baseline_relay`` is
the bare relay the figures can be compared with. Installed with the package, so
``python -m bench`` works after ``pip install '.[bench]'``. See README.md (a sizing
guide) and HISTORY.md (earlier measurements).
"""
