"""Benchmark: ``bench`` measures each performance pattern against its naive twin in one run.

Nothing here is imported by the service itself: the bench-only routes and app variants exist
only in the servers the ``bench`` command starts.
"""
