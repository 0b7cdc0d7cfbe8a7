"""``<slug> bench METHOD PATH``: the development tool that load-tests one of the service's routes
beside a bare FastAPI route (command.py), with its load generators (driver.py, load.py) and the
servers it starts (servers.py).

Not part of the product: the wheel and the image hold only the service's package, and the CLI
registers ``bench`` only where this package is importable (a development checkout, where
``src/`` is on the path). The figures comparing each pattern with its naive twin are the
template repository's benchmark, not this.
"""
