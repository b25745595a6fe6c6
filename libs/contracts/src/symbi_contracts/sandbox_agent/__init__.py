"""The sandbox-agent's contract: ``execution.*``/``host.*`` events (:mod:`.events`), its commands (:mod:`.commands`)
and their typed errors (:mod:`.errors`), and the tier choice by risk (:mod:`.risk`)."""
