"""The pure detection core: no Faust, no Kafka.

Used identically by the workers, the offline commands (``stream score``, ``eval``, ``drift``) and
the unit tests.
"""
