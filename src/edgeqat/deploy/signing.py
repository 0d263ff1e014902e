"""The controller's Ed25519 signing key: manifests are signed here, devices hold only the public half.

The private key lives at ``<home>/secrets/deploy_signing_key`` (PKCS#8 PEM, mode 0600, generated on
first use); the public key at ``<home>/deploy_signing_key.pub`` is what gets copied to devices
(``edgeqat agent --public-key``). Signing uses ``cryptography``; verifying on the device does not
need it (``edgeqat.agent.ed25519``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeqat.agent.manifest import ReleasePayload, canonical_json, encode_manifest, public_key_pem
from edgeqat.stack.auth import read_secret_file, write_secret_file

PRIVATE_KEY_FILE = "deploy_signing_key"
PUBLIC_KEY_FILE = "deploy_signing_key.pub"


@dataclass(frozen=True)
class ManifestSigner:
    """Signs release payloads into ``manifest.json`` bytes."""

    private_pem: str
    public_key: bytes  # raw 32 bytes

    def sign(self, payload: ReleasePayload) -> bytes:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(self.private_pem.encode("ascii"), password=None)
        signature = key.sign(canonical_json(payload.to_dict()))
        return encode_manifest(payload, signature, self.public_key)


def load_or_create_signer(home: Path | str) -> ManifestSigner:
    """The signing key under ``home`` (``.edgeqat`` by default), generated once; the public key written beside."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
        load_pem_private_key,
    )

    home = Path(home).expanduser().absolute()
    private_path = home / "secrets" / PRIVATE_KEY_FILE
    pem = read_secret_file(private_path)
    if pem is None:
        pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
        write_secret_file(private_path, pem.strip())
    key = load_pem_private_key(pem.encode("ascii"), password=None)
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    public_path = home / PUBLIC_KEY_FILE
    text = public_key_pem(raw)
    if not public_path.exists() or public_path.read_text() != text:
        public_path.write_text(text)
    return ManifestSigner(pem, raw)
