"""The declared fleet: the fleet file parsed and validated whole, the pure plans made from it
(``file``: apply, enrolment, drain), and their I/O side (``enrol``: a worker's enrolment, an apply,
a drain).

May import ``perseus.core`` (decisions, lifecycle), the client side (to register and command
instances), the host workers' records and poll window (``host.workers``), the store, config,
temporal and the shared models, keys, timing, version and errors; never the CLI, the API or the
host's keeper.
"""
