"""One small app module per framework for bench/worker.py, all running the same no-op task ``bench.noop(x, y)``.

Each module builds its app from ``$BENCH_BROKER_URL`` when imported by its framework's worker command; the
benchmark imports the same ``make()`` functions to publish. The task body is :func:`counter.tick`.
"""
