"""Everything the tests share, and the only place they import helpers from.

- ``fixtures``: the pytest fixtures (``kafka_bootstrap``, ``unique_name``, ``daemons``,
  ``broker``), registered as a plugin by ``tests/conftest.py``
- ``topics``: create topics, produce, :class:`~tests.support.topics.TopicCollector`
  (presence) and :func:`~tests.support.topics.read_to_end` (absence, exactly one)
- ``exchange``: the simulator on loopback with a key per account
- ``daemon``: daemons as subprocesses from a TOML config; ``inprocess``: daemons in the
  test's loop, or from environment variables; ``broker``: a broker a test may kill
- ``intake``: intake settings and a scriptable engine; ``engine``: the engine's
  in-memory exchange and recorders
- ``waiting`` (``wait_for``), ``figures`` (reliability figures), ``probe``, ``tls``,
  ``keys``, ``demo``, ``http1_answers``
"""
