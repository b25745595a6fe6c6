"""The lifecycle service's contract: the agent configuration (:mod:`.config`) and the ``agent.*`` events (:mod:`.events`)."""
