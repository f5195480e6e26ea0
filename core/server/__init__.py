"""Runs that outlive the terminal: the run host, the per-repository supervisor, and its clients.

A :class:`~corral.core.server.host.RunHost` owns one run (its runtime, its decisions, the history a
late client needs). The supervisor (:mod:`.supervisor`) hosts the runs of one repository in a
process of its own and serves them over a Unix socket; :mod:`.client` is what every front end
uses, whether the host is in the same process (``--headless``, programs) or in the supervisor.
"""
