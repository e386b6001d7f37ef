"""Benchmarks for trickle servers: ``python -m bench {fanout,live,small,join,all}``.

Layout: ``cli`` (commands, output; ``cli_args`` its parser) -> ``runner`` (targets x
configs x reps, find-max) -> ``workers`` (spawned load-generator processes) ->
``scenarios/`` (what each process does; ``scenarios/engine`` drives live channels,
``scenarios/chunks`` their stamped chunks) -> ``client`` (the one minimal HTTP/1.1 client
on raw non-blocking sockets, awaited in trio tasks or driven synchronously) and
``reactor`` (the epoll set through which the live engine drives many connections).
``servers`` starts or finds the servers under test, ``procstat`` reads their CPU and
memory (psutil), ``report`` writes the table (with a ratio column against the
``reference`` target, go-livepeer's own server), JSON and plots; ``baseline_relay`` is
the bare relay the figures can be compared with. Tools beside it: ``through_proxy``
(HAProxy in front), ``soak`` (with ``soak_server``: churn for minutes, memory and tasks
sampled), ``parser_cost`` (the client's parser against h11). Installed with the package, so
``python -m bench`` works after ``pip install '.[bench]'``. See README.md (a sizing
guide) and HISTORY.md (earlier measurements).
"""
