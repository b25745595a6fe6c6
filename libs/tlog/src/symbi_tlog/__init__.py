"""Verification of Symbi's audit log that needs no trust in whoever runs it.

Pure functions and small classes, no I/O: RFC 6962 Merkle trees and proofs (:mod:`.merkle`), C2SP
signed-note checkpoints and witness cosignatures (:mod:`.notes`, :mod:`.cosign`), the Merkle leaf of a
stored event and the log verification rules (:mod:`.rules`), the export format and the offline
verifier with its trust anchor (:mod:`.offline`), and the C2SP tlog-witness protocol (:mod:`.witness`).
Shared by the audit service, which builds the log, and the ``symbi`` CLI, which checks it.
"""
