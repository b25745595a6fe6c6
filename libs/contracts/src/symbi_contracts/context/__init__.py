"""The context service's contract: the commands other services send it (:mod:`.commands`)."""
