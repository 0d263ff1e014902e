"""The manifest format: round trips, the publisher's key file, and every way a manifest is refused."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgeqat.agent.keys import PublicKeyError
from edgeqat.agent.manifest import Manifest, ManifestError, Preprocessing, ReleasePayload, SignatureError, \
    canonical_json, key_id, load_public_key, parse_manifest, release_key
from tests.unit.agent.helpers import PRE, Signer, make_payload

SHA = "0123456789ab" + "c" * 52


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def test_release_key_and_canonical_json() -> None:
    assert release_key("3", SHA) == "releases/v3-0123456789ab/model.onnx"
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == b'{"a":[1.5,"\\u00e9"],"b":1}'
    with pytest.raises(ManifestError, match="version"):
        release_key("../3", SHA)
    with pytest.raises(ManifestError, match="sha256"):
        release_key("3", "ABC")


def test_payload_and_preprocessing_round_trip() -> None:
    payload = make_payload(b"model", "7", target="edge-a")
    d = payload.to_dict()
    assert set(d) == {"schema", "target", "model_name", "version", "model_key", "sha256", "size_bytes", "metrics",
                      "preprocessing", "published_at", "run_id", "source"}
    assert set(d["preprocessing"]) == {"input_name", "layout", "dtype", "channels", "image_size", "scale", "mean",
                                       "std", "resize", "class_names"}
    assert ReleasePayload.from_dict(json.loads(json.dumps(d))) == payload
    assert Preprocessing.from_dict(PRE.to_dict()) == PRE


def test_signed_manifest_parses_and_key_file_loads(signer: Signer, tmp_path: Path) -> None:
    payload = make_payload(b"model", "1")
    data = signer.manifest(payload)
    doc = json.loads(data)
    assert len(base64.b64decode(doc["signature"])) == 64
    assert doc["key_id"] == key_id(signer.public_raw) and len(doc["key_id"]) == 16
    assert parse_manifest(data, signer.public_raw) == payload
    manifest = Manifest.parse(data, signer.public_raw)
    assert manifest.to_bytes() == data and manifest.key_id == doc["key_id"]
    with pytest.raises(SignatureError, match="does not match"):
        Manifest.signed(payload, Signer().sign, signer.public_raw)
    assert load_public_key(signer.write_pem(tmp_path / "k.pub")) == signer.public_raw


def _resign(signer: Signer, mutate) -> bytes:
    payload = make_payload(b"model", "1").to_dict()
    mutate(payload)
    doc = {"payload": payload, "signature": base64.b64encode(signer.sign(canonical_json(payload))).decode(),
           "key_id": key_id(signer.public_raw)}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda p: p.pop("sha256"), "has no 'sha256'"),
    (lambda p: p.update(size_bytes="12"), r"size_bytes must be int"),
    (lambda p: p.update(size_bytes=True), r"size_bytes must be int"),
    (lambda p: p.update(schema=2), "schema 2"),
    (lambda p: p.update(extra=1), "unknown keys"),
    (lambda p: p.update(model_key="../../etc/passwd"), "model_key"),
    (lambda p: p.update(published_at="yesterday"), "published_at"),
    (lambda p: p["metrics"].update(acc="high"), "metrics"),
    (lambda p: p["preprocessing"].update(channels=2), "channels=2"),
    (lambda p: p["preprocessing"].update(mean=[0.1, 0.2]), "mean"),
    (lambda p: p["preprocessing"].update(layout="NHWC"), "layout"),
    (lambda p: p["preprocessing"].pop("class_names"), "class_names"),
])
def test_malformed_payload_is_a_manifest_error(signer: Signer, mutate, match: str) -> None:
    with pytest.raises(ManifestError, match=match) as info:
        parse_manifest(_resign(signer, mutate), signer.public_raw)
    assert not isinstance(info.value, SignatureError)


def test_tampered_or_foreign_manifests_are_signature_errors(signer: Signer) -> None:
    good = json.loads(signer.manifest(make_payload(b"model", "1")))
    edited = json.loads(json.dumps(good))
    edited["payload"]["version"] = "2"
    with pytest.raises(SignatureError, match="does not verify"):
        parse_manifest(json.dumps(edited).encode(), signer.public_raw)
    other = Signer()
    with pytest.raises(SignatureError, match=f"signed with key {key_id(signer.public_raw)}"):
        parse_manifest(json.dumps(good).encode(), other.public_raw)
    for signature in (None, "not base64!", base64.b64encode(b"short").decode()):
        doc = {**good, "signature": signature}
        with pytest.raises(SignatureError):
            parse_manifest(json.dumps(doc).encode(), signer.public_raw)
    with pytest.raises(ManifestError, match="not JSON"):
        parse_manifest(b"{nope", signer.public_raw)


def test_load_public_key_rejects_other_files(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    with pytest.raises(PublicKeyError, match="--public-key"):
        load_public_key(tmp_path / "missing.pub")
    ec = tmp_path / "ec.pub"
    ec.write_bytes(generate_private_key(SECP256R1()).public_key().public_bytes(Encoding.PEM,
                                                                            PublicFormat.SubjectPublicKeyInfo))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello")
    for path in (ec, garbage):
        with pytest.raises(PublicKeyError, match="not an Ed25519 public key"):
            load_public_key(path)


def test_preprocessing_checks_its_values() -> None:
    with pytest.raises(ManifestError, match="std"):
        replace(PRE, std=(0.0,))
    with pytest.raises(ManifestError, match="class_names"):
        replace(PRE, class_names=())


def test_encode_manifest_for_a_signature_made_elsewhere(signer: Signer) -> None:
    from edgeqat.agent.manifest import encode_manifest

    payload = make_payload(b"model", "1")
    signature = signer.sign(canonical_json(payload.to_dict()))
    assert encode_manifest(payload, signature, signer.public_raw) == signer.manifest(payload)
    with pytest.raises(SignatureError):
        encode_manifest(payload, signature, Signer().public_raw)
