"""The C2SP tlog-witness protocol (https://c2sp.org/tlog-witness), pure: requests and decisions.

``POST <prefix>/add-checkpoint`` carries an old size line, up to 63 consistency proof lines, an
empty line and a signed checkpoint note. :func:`decide` applies the protocol's checks, in its order,
to the witness's latest cosigned (size, root) for the origin and answers as the spec says:

- 400 malformed body, or old size above the checkpoint's size;
- 404 unknown origin; 403 no signature by a trusted log key;
- 409 old size is not the witness's latest size (body: that size, ``text/x.tlog.size``), or the
  same size with another root;
- 422 the consistency proof does not verify (a fork: the witness refuses to cosign it);
- 200 otherwise: the caller persists the new state atomically and returns its cosignature lines.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from symbi_tlog.errors import CheckpointInvalid, WitnessRequestMalformed
from symbi_tlog.merkle import EMPTY_ROOT, verify_consistency
from symbi_tlog.notes import Checkpoint, parse_checkpoint, verify_checkpoint

MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    old_size: int
    proof: list[bytes]
    note: str


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The request body of an add-checkpoint call."""
    lines = [f"old {old_size}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n"]
    return ("".join(lines) + note).encode()


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse a request body; :class:`WitnessRequestMalformed` says what is wrong."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise WitnessRequestMalformed("the request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise WitnessRequestMalformed("the request needs an empty line between the proof and the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    digits = first[4:]
    if (
        not first.startswith("old ")
        or not (digits.isascii() and digits.isdigit())
        or (digits != "0" and digits.startswith("0"))
    ):
        raise WitnessRequestMalformed(f"the first line must be 'old <size>', not {first[:40]!r}")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessRequestMalformed(f"more than {MAX_PROOF_LINES} consistency proof lines")
    try:
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except binascii.Error:
        raise WitnessRequestMalformed("a consistency proof line is not base64") from None
    if any(len(h) != 32 for h in proof):
        raise WitnessRequestMalformed("a consistency proof hash is not 32 bytes")
    return AddCheckpoint(int(digits), proof, note)


@dataclass(frozen=True, slots=True)
class LogKey:
    """A log the witness follows: its origin and the note key (name, Ed25519 public key) that signs it."""

    origin: str
    key_name: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request: ``status`` 200 with the checkpoint to cosign, or an error and its body."""

    status: int
    body: str
    checkpoint: Checkpoint | None = None
    content_type: str = "text/plain; charset=utf-8"


def decide(request: AddCheckpoint, logs: Mapping[str, Sequence[LogKey]], latest: tuple[int, bytes] | None) -> Decision:
    """Apply the tlog-witness checks to ``request`` given the witness's ``latest`` (size, root) for its origin."""
    try:
        checkpoint, _ = parse_checkpoint(request.note)
    except CheckpointInvalid as err:
        return Decision(400, f"{err.message}\n")
    keys = logs.get(checkpoint.origin)
    if not keys:
        return Decision(404, f"unknown log origin {checkpoint.origin!r}\n")
    if not any(_signed_by(request.note, key) for key in keys):
        return Decision(403, "the checkpoint carries no valid signature by a trusted key of its log\n")
    if request.old_size > checkpoint.size:
        return Decision(400, f"old size {request.old_size} is above the checkpoint size {checkpoint.size}\n")
    if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
        return Decision(422, "a checkpoint of size 0 must have the empty tree's root\n")
    size, root = latest if latest is not None else (0, EMPTY_ROOT)
    if request.old_size != size:
        return Decision(409, f"{size}\n", content_type=SIZE_CONTENT_TYPE)
    if checkpoint.size == size:
        if checkpoint.root != root:
            return Decision(409, "a checkpoint of this size with another root was cosigned before\n")
        return Decision(200, "", checkpoint)
    if size == 0:
        if request.proof:
            return Decision(422, "the consistency proof from size 0 must be empty\n")
        return Decision(200, "", checkpoint)
    if not verify_consistency(size, checkpoint.size, root, checkpoint.root, request.proof):
        return Decision(422, f"the checkpoint is not consistent with the one of size {size} cosigned before\n")
    return Decision(200, "", checkpoint)


def _signed_by(note: str, key: LogKey) -> bool:
    try:
        verify_checkpoint(note, key_name=key.key_name, public_key=key.public_key, origin=key.origin)
    except CheckpointInvalid:
        return False
    return True
