"""What the service tells about itself: request timing (``timing``), request ids and the access
log (``request_log``), log setup (``logs``), Prometheus metrics (``metrics``), OpenTelemetry
tracing (``tracing``), and what the lifespan switches on for its pools (``resources``).

Empty on purpose: importing one of them loads no other (tracing's SDK stays unloaded when off).
"""
