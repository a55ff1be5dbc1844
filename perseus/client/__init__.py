"""The client side of an instance: register, command and find its workflow (``control``), the same
commands for the CLI and the API with refusals recorded (``operate``), the CLI in API mode
(``remote``), pause and resume (``maintenance``), and who is acting (``actors``).

May import ``perseus.temporal``, ``perseus.config``, ``perseus.tracing``, ``perseus.core``
(lifecycle, decisions, pause), the store and the shared models, keys, timing and errors; never the
workflows, the activities, the host's keeper, the CLI or the API.
"""
