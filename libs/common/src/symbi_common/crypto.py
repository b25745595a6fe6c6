"""Cryptographic primitives: Ed25519 signing and X25519 sealed boxes (PyNaCl), AES-256-GCM (cryptography).

Private key material never appears in ``repr``, logs or errors.
"""

from __future__ import annotations

import hashlib
import os

import nacl.exceptions
import nacl.public
import nacl.signing
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE = 12
KEY_SIZE = 32


def key_id_for(public_key: bytes) -> str:
    """A short stable id for a public key: ``ed25519:`` + first 16 hex chars of its SHA-256."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


class Signer:
    """An Ed25519 private key with its id. ``repr`` never shows the key."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)
        self.key_id = key_id_for(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(os.urandom(32))

    def seed(self) -> bytes:
        """The private seed, for writing the key file only."""
        return bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


class Verifier:
    """An Ed25519 public key."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, public_key: bytes) -> None:
        self._key = nacl.signing.VerifyKey(public_key)
        self.public_key = public_key
        self.key_id = key_id_for(public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True


class AeadKey:
    """An AES-256-GCM key. Encrypt with a fresh random 96-bit nonce; decrypt returns None on failure.
    ``uses`` counts its encryptions (random nonces bound their number per key: see DataKeys)."""

    __slots__ = ("_aead", "key_id", "uses")

    def __init__(self, key_id: str, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("an AES-256 key is 32 bytes")
        self.key_id = key_id
        self._aead = AESGCM(key)
        self.uses = 0

    def encrypt(self, plaintext: bytes, associated_data: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
        nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self.uses += 1
        return nonce, self._aead.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes | None:
        try:
            return self._aead.decrypt(nonce, ciphertext, associated_data)
        except (InvalidTag, ValueError):
            return None

    def __repr__(self) -> str:
        return f"AeadKey(key_id={self.key_id!r})"


def wrap_key_id_for(public_key: bytes) -> str:
    """A short stable id for an X25519 public key: ``x25519:`` + first 16 hex chars of its SHA-256."""
    return "x25519:" + hashlib.sha256(public_key).hexdigest()[:16]


class WrapKey:
    """An X25519 private key that opens data keys sealed for it (anonymous sealed boxes).

    Writers seal a data key to each entitled reader's public key with :func:`seal_to`; only the
    holder of the private half can open it. ``repr`` never shows the key.
    """

    __slots__ = ("_box", "_key", "key_id", "public_key")

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ValueError("an X25519 private key is 32 bytes")
        self._key = nacl.public.PrivateKey(private_key)
        self._box = nacl.public.SealedBox(self._key)
        self.public_key = bytes(self._key.public_key)
        self.key_id = wrap_key_id_for(self.public_key)

    @classmethod
    def generate(cls) -> WrapKey:
        return cls(bytes(nacl.public.PrivateKey.generate()))

    def private_bytes(self) -> bytes:
        """The private key, for writing the key file only."""
        return bytes(self._key)

    def unseal(self, sealed: bytes) -> bytes | None:
        """The plaintext of a box sealed to this key, or None if it was not (or was tampered with)."""
        try:
            return bytes(self._box.decrypt(sealed))
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return None

    def __repr__(self) -> str:
        return f"WrapKey(key_id={self.key_id!r})"


def seal_to(public_key: bytes, plaintext: bytes) -> bytes:
    """Seal ``plaintext`` so that only the holder of the X25519 private key of ``public_key`` can open it."""
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(public_key)).encrypt(plaintext))


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)
