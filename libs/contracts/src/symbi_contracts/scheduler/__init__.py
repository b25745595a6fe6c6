"""The scheduler's contract: the ``task.*`` events (:mod:`.events`)."""
