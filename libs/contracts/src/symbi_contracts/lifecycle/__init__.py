"""The lifecycle service's contract: the agent configuration (:mod:`.config`), the ``agent.*`` events (:mod:`.events`)
and the commands other services send it (:mod:`.commands`)."""
