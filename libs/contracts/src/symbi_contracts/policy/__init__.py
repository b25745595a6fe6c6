"""The policy service's contract: the commands other services send it (:mod:`.commands`)."""
