"""The pure-Python Ed25519 verifier agrees with RFC 8032's vectors and with ``cryptography`` (OpenSSL)."""

from __future__ import annotations

import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeqat.agent import ed25519

# RFC 8032 §7.1, TEST 1-3: (secret key, public key, message, signature), hex.
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]
L = 2**252 + 27742317777372353535851937790883648493


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    sk, pk, msg, sig = map(bytes.fromhex, (secret, public, message, signature))
    assert ed25519.verify(pk, msg, sig)
    assert ed25519.public_key_from_seed(sk) == pk
    assert ed25519.sign(sk, msg) == sig
    assert not ed25519.verify(pk, msg + b"x", sig)


def test_agrees_with_cryptography_on_random_keys_and_messages() -> None:
    rng = random.Random(0)
    for i in range(12):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        message = os.urandom(rng.randrange(0, 300))
        signature = key.sign(message)
        assert ed25519.verify(public, message, signature), i
        # Tampering with any one byte of the message or the signature must fail.
        if message:
            bad = bytearray(message)
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            assert not ed25519.verify(public, bytes(bad), signature)
        bad_sig = bytearray(signature)
        bad_sig[rng.randrange(64)] ^= 1 << rng.randrange(8)
        assert not ed25519.verify(public, message, bytes(bad_sig))
        other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert not ed25519.verify(other, message, signature)


def test_rejects_non_canonical_s_and_malformed_input() -> None:
    sk, pk, _, sig = map(bytes.fromhex, RFC8032[0])
    s = int.from_bytes(sig[32:], "little")
    malleable = sig[:32] + (s + L).to_bytes(32, "little")  # the same point equation, S >= L
    assert not ed25519.verify(pk, b"", malleable)
    assert not ed25519.verify(pk, b"", sig[:63])
    assert not ed25519.verify(pk[:31], b"", sig)
    assert not ed25519.verify(b"\xff" * 32, b"", sig)  # y >= p does not decode
    assert not ed25519.verify(pk, b"", b"\x00" * 64)
