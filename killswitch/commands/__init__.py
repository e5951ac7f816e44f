"""The operator commands, one module per command.

``trigger`` (:mod:`.trigger`) and ``release`` (:mod:`.release`) publish an alert built
and validated by :mod:`.prepare` and follow its results; ``results`` (:mod:`.results`)
reads an alert's results back; ``status`` (:mod:`.status`) reads the compacted state
topic; ``check`` (:mod:`.check`) tries Kafka, the topics, the daemons' consumer group,
the exchange and every account's key with read-only calls; :mod:`.operator_keys` writes
and loads operator signing keys (``keygen --ed25519``). :mod:`.common` holds what they
share. ``killswitch.cli`` imports each command's ``cli_<name>`` and
``add_arguments_<name>`` by name when it runs.

The decisions and the text live in pure functions (:mod:`.prepare`,
:mod:`killswitch.board` for folding results, :mod:`killswitch.render` for everything
printed); these modules are the I/O around them. Exit codes
(:mod:`killswitch.exitcodes`): 0 success, 1 the job failed (not flat, timed out, a
check failed, Kafka unreachable), 2 bad usage or a trigger the daemon refused (dead
letter, the reason printed), 3 nothing to act on: flat but order ids named were never
found open, or a release of an account that was not halted
(see :meth:`killswitch.board.Board.exit_code`).
"""
