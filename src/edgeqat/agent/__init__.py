"""The device agent: poll a signed release manifest, verify and smoke-test the model, serve it.

Runs on the edge device, so every module here imports only the stdlib, numpy, onnxruntime, boto3
(lazily, for ``s3://`` locations) and the numpy-only :mod:`edgeqat.quant.isa`: never torch,
Lightning, MLflow, Hydra, timm, onnx or cryptography (Ed25519 verification is pure Python).

- :mod:`~edgeqat.agent.manifest`: the manifest format shared with the publisher
- :mod:`~edgeqat.agent.ed25519`: signature verification
- :mod:`~edgeqat.agent.store`: a directory or S3 prefix behind one interface
- :mod:`~edgeqat.agent.images`: PNG/PGM/PPM/npy decoding and the training-side preprocessing
- :mod:`~edgeqat.agent.predictor`: the ONNX Runtime smoke test and predictions
- :mod:`~edgeqat.agent.agent`: the poll / verify / activate loop
- :mod:`~edgeqat.agent.cli`: ``edgeqat agent`` and ``edgeqat agent predict``

Nothing is imported here, so ``import edgeqat.agent.manifest`` costs only that module.
"""
