"""Symbi audit service: continuous verification of the event log, its RFC 6962 tree, witnessed signed
checkpoints, the log guard, proofs, queries and compliance reports (the verification itself: ``symbi_tlog``)."""
