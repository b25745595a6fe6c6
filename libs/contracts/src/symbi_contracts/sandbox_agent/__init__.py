"""The sandbox-agent's contract: ``execution.*``/``host.*`` events (:mod:`.events`), the typed errors of its
commands (:mod:`.errors`) and the tier choice by risk (:mod:`.risk`)."""
