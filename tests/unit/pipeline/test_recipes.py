"""The quantization recipes end to end on a tiny job: what lands in the run is what ORT runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient

from edgeqat.pipeline import list_recipes
from edgeqat.quant import Isa, detect_cpu, evaluate_onnx, resolve_ort_gemm_convs
from edgeqat.quant.unround import quantized_activations
from edgeqat.train import build, train

# timm's tiny ResNet (the factory restores the BN gammas timm zero-inits: QAT's BN fold divides by them).
TINY_QAT = ["model=resnet18", "model.name=test_resnet", "quant.qat_epochs=1", "quant.benchmark_resolutions=[32]",
            "quant.latency_iters=5", "trainer.max_epochs=2"]


def _run(tracking_uri: str, run_id: str):
    return MlflowClient(tracking_uri).get_run(run_id)


def _artifacts(tracking_uri: str, run_id: str, path: str) -> set[str]:
    return {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id, path)}


def test_recipes_registered() -> None:
    assert {"fp32", "qat_int8", "ptq_int8"} <= set(list_recipes())


@pytest.mark.slow
def test_qat_int8_metrics_come_from_the_exported_file(compose, tracking_uri: str, tmp_path: Path) -> None:
    cfg = compose(*TINY_QAT, "quant=qat_int8", "quant.ptq_baseline=true", "quant.ort_gemm_convs=true")
    result = train(cfg)
    run = _run(tracking_uri, result.run_id)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    for key in ("test/acc_fp32", "test/acc_qat", "test/acc_int8", "test/acc_ptq", "int8/acc_drop", "int8/top1_agreement",
                "fp32/latency_ms", "int8/latency_ms", "int8/speedup", "int8/latency_ms_32", "fp32/size_mb", "int8/size_mb"):
        assert key in m, key
    assert m["int8/acc_drop"] == pytest.approx(m["test/acc_fp32"] - m["test/acc_int8"])
    assert m["int8/top1_agreement"] >= 0.97  # ORT INT8 vs the converted graph's integer reference, test split
    assert m["int8/fake_quant_agreement"] >= 0.97  # ... and vs the float fake-quant model QAT trained
    assert m["int8/qlinearconv"] > 0 and m["int8/size_ratio"] < 0.4
    # quant.ort_gemm_convs: test_resnet's two deep layer4 convs run on ORT's GEMM kernel, as report.json says;
    # not on a CPU whose kernels saturate, where both have a 7-bit weight at -64 that the shift would push out.
    cpu = detect_cpu()
    report = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/int8/report.json")
    routed = 0 if cpu.isa.saturates_u8s8 else 2
    assert report["qlinearconv_kernels"].get("gemm", 0) == m["int8/qlinearconv_gemm"] == routed
    # The CPU and ISA every figure comes from; the file computes on it what fake-quant computed.
    tags = run.data.tags
    assert tags["edgeqat.cpu"] == cpu.model and tags["edgeqat.isa"] == tags["edgeqat.target_isa"] == cpu.isa.value
    assert tags["edgeqat.weight_range"] == ("int7" if cpu.isa.saturates_u8s8 else "int8")
    assert m["int8/dense_weight_max"] == (64 if cpu.isa.saturates_u8s8 else 127)
    assert m["int8/max_step_drift"] <= 1.001 and m["int8/mean_step_drift"] < 0.01
    assert m["int8/within_step_fraction"] == 1.0  # follows from the max here; logged for the deep nets where it does not
    assert tags["mlflow.note.content"].startswith(f"Finished: INT8 test accuracy {m['test/acc_int8']:.3f} "
                                                  f"(FP32 {m['test/acc_fp32']:.3f}, ")
    assert f"ORT's PTQ {m['test/acc_ptq']:.3f}" in tags["mlflow.note.content"]
    verification = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/int8/verification.json")
    assert verification["isa"] == cpu.isa.value and verification["exact_on_target"] is True
    assert verification["max_step_drift"] == pytest.approx(m["int8/max_step_drift"])
    assert verification["fake_quant"]["max_step_drift"] == pytest.approx(m["int8/fake_quant_max_step_drift"])
    # FP32 trained with AdamW (optim=adamw); QAT fine-tuned with quant.qat_optimizer at quant.qat_lr
    assert "lr-AdamW" in m and m["lr-SGD"] == pytest.approx(cfg.quant.qat_lr)
    assert {"int8/model.onnx", "int8/report.json", "int8/verification.json", "int8/per_class_damage.json",
            "int8/per_class_damage.png", "int8/confusion.png"} <= _artifacts(tracking_uri, result.run_id, "int8")
    assert "fp32/model.onnx" in _artifacts(tracking_uri, result.run_id, "fp32")
    assert "ptq/model.onnx" in _artifacts(tracking_uri, result.run_id, "ptq")

    # Re-run the logged INT8 file ourselves: test/acc_int8 is its ORT accuracy, not the torch model's.
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/int8/model.onnx", dst_path=str(tmp_path)))
    ops = {n.op_type for n in onnx.load(str(local)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in onnx.load(str(local)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights
    datamodule, _ = build(cfg)
    images, labels = datamodule.split_arrays("test")
    assert evaluate_onnx(local, images, labels).accuracy == pytest.approx(m["test/acc_int8"])
    table = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/int8/per_class_damage.json")
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert sum(r["n"] for r in rows) == len(labels)
    assert np.average([r["acc_int8"] for r in rows], weights=[r["n"] for r in rows]) == pytest.approx(
        m["test/acc_int8"], abs=1e-3)
    assert tags["edgeqat.phase"] == "verify" and tags["edgeqat.progress"] == "100"


@pytest.mark.parametrize(("setting", "isa", "expected"), [
    ("null", Isa.AMX, True), ("null", Isa.AVX512_VNNI, False), ("null", Isa.AVX2, False), ("true", Isa.AVX2, True),
    ("false", Isa.AMX, False),
])
def test_ort_gemm_convs_null_follows_the_target(compose, setting: str, isa: Isa, expected: bool) -> None:
    assert compose().quant.ort_gemm_convs is None  # the default: decided by the target ISA
    assert resolve_ort_gemm_convs(compose(f"quant.ort_gemm_convs={setting}").quant.ort_gemm_convs, isa) is expected
    assert resolve_ort_gemm_convs(None) is (detect_cpu().isa is Isa.AMX)  # no target named: this CPU


def test_ptq_int8_recipe(compose, tracking_uri: str) -> None:
    result = train(compose(*TINY_QAT, "quant=ptq_int8"))
    m = _run(tracking_uri, result.run_id).data.metrics
    assert "test/acc_qat" not in m and "test/acc_int8" in m and m["int8/qlinearconv"] > 0
    assert "int8/top1_agreement" not in m and "int8/fake_quant_agreement" not in m  # no torch model to agree with
    # `edgeqat sensitivity` afterwards: PTQ's unrounded weights are the FP32 file's, every layer gets a row
    from edgeqat.pipeline.run_sensitivity import sensitivity_of_run

    report = sensitivity_of_run(MlflowClient(tracking_uri), result.run_id, scope="layer", images=48)
    assert report.scope == "layer" and report.n_images == 48 and sum(r.kind == "layer" for r in report.layers) == 16
    assert sum(r.kind == "activation" for r in report.layers) > 16  # and a row per rounded activation
    assert report.fp32_accuracy is not None and max(r.accuracy for r in report.layers) <= 1.0
    assert mlflow.artifacts.load_dict(f"runs:/{result.run_id}/int8/sensitivity.json")["scope"] == "layer"


def test_fp32_recipe_exports_only_fp32(compose, tracking_uri: str) -> None:
    result = train(compose("quant=fp32"))
    m = _run(tracking_uri, result.run_id).data.metrics
    assert "fp32/latency_ms" in m and "test/acc_fp32_onnx" in m and not any(k.startswith("int8/") for k in m)
    assert _artifacts(tracking_uri, result.run_id, "int8") == set()


def test_init_checkpoint_skips_fp32_training(compose, tracking_uri: str) -> None:
    first = train(compose("quant=fp32", "model=resnet18", "model.name=test_resnet"))
    uri = f"runs:/{first.run_id}/checkpoints/fp32/best.ckpt"
    second = train(compose("quant=ptq_int8", "model=resnet18", "model.name=test_resnet", f"quant.init_checkpoint={uri}"))
    client = MlflowClient(tracking_uri)
    assert client.get_metric_history(second.run_id, "train/loss") == []  # no FP32 epoch was run
    m = client.get_run(second.run_id).data.metrics
    assert m["test/acc_fp32"] == pytest.approx(client.get_run(first.run_id).data.metrics["test/acc_fp32"])


def test_unknown_weight_range_or_isa_fails_before_any_run(compose, tracking_uri: str) -> None:
    from edgeqat.errors import EdgeqatError

    with pytest.raises(EdgeqatError, match="Unknown quant.weight_range 'int6'"):
        train(compose("quant=qat_int8", "quant.weight_range=int6"))
    with pytest.raises(EdgeqatError, match="Unknown quant.target_isa 'avx3'"):
        train(compose("quant=qat_int8", "quant.target_isa=avx3"))
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_init_checkpoint_that_is_not_a_file_is_a_clear_error(compose) -> None:
    from edgeqat.errors import EdgeqatError

    with pytest.raises(EdgeqatError, match="quant.init_checkpoint='/nope.ckpt' is not a file"):
        build(compose("quant.init_checkpoint=/nope.ckpt"))


@pytest.mark.slow
def test_any_timm_model_trains_and_verifies_by_name_alone(compose, tracking_uri: str) -> None:
    """``model.name=<x>`` on the default config, the rest only made small: a verified INT8 model.

    mobilenetv2_050 is the model whose constructor got resnet18's options (a TypeError); the quant
    path of the other families is ``test_coverage.py``'s (efficientnet_b0, ghostnet and six more), at
    a fraction of a whole job's time.
    """
    name = "mobilenetv2_050"
    cfg = compose("data=digits", "data.image_size=16", f"model.name={name}", "trainer.max_epochs=1",
                  "trainer.enable_progress_bar=false", "quant.qat_epochs=1", "quant.benchmark_resolutions=[]",
                  "quant.latency_iters=2", "registry.log_models=false", tiny=False)
    result = train(cfg)
    run = _run(tracking_uri, result.run_id)
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == name
    assert m["int8/qlinearconv"] > 0 and m["int8/float_conv"] == 0
    assert m["int8/top1_agreement"] >= 0.99
    # ORT computes the file's own definition; where the logits differ by more than a step (mobilenetv2_050
    # with int8 weights on AVX-512 VNNI: 3 steps), localize_drift finds rounding ties only, grown by the net
    assert m["int8/max_step_drift"] <= 1.001 or m["int8/max_source_steps"] == 1


@pytest.mark.slow
def test_sensitivity_and_fallback_are_logged_and_the_fallback_file_is_the_int8_model(compose, tracking_uri: str,
                                                                                    tmp_path: Path) -> None:
    """QAT's own trained weights reach the report (an extra unfolded export); a fallback that keeps a
    layer float hands that file to verify, where ORT runs exactly that conv in float."""
    cfg = compose(*TINY_QAT, "quant=qat_int8", "quant.sensitivity=true", "quant.fallback.max_drop=0",
                  "quant.fallback.max_layers=1", "quant.fallback.target_z=1")
    result = train(cfg)
    run = _run(tracking_uri, result.run_id)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    report = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/int8/sensitivity.json")
    layer_rows = [row for row in report["layers"] if row["kind"] == "layer"]
    assert len(layer_rows) == 16  # test_resnet: 15 convs and the classifier, then its rounded activations
    analysed = "int8_before_fallback" if m["fallback/layers"] + m["fallback/activations"] else "int8"
    analysed = mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/{analysed}/model.onnx",
                                                   dst_path=str(tmp_path))
    assert len(report["layers"]) == m["sensitivity/layers"] == 16 + len(quantized_activations(onnx.load(analysed)))
    assert all(row["float_kernels"] == report["base_float_kernels"] + 1 for row in layer_rows)
    assert {"sensitivity.json", "sensitivity_table.json", "sensitivity.png", "fallback.json"} <= {
        Path(p).name for p in _artifacts(tracking_uri, result.run_id, "int8")}
    fallback = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/int8/fallback.json")
    assert m["fallback/layers"] == len(fallback["chosen"]) and m["fallback/activations"] == len(fallback["unrounded"])
    # target_z: the accuracy the target was held to is the one after, less a standard error of the drop vs FP32
    assert m["fallback/val_acc_after_bound"] == pytest.approx(m["fallback/val_acc_after"] - fallback["margin_after"])
    assert fallback["met"] == (m["fallback/val_acc_after_bound"] >= fallback["target_accuracy"] - 1e-9)
    assert fallback["n_float"] <= 1 and m["fallback/val_acc_after"] >= m["fallback/val_acc_before"]
    if fallback["n_float"]:  # the artifact computes that layer (or that activation's readers) in float
        assert fallback["chosen"] + fallback["unrounded"] == [report["layers"][0]["layer"]]
        assert m["int8/float_conv"] == 1 if fallback["chosen"] else m["int8/float_conv"] >= 0
        assert _artifacts(tracking_uri, result.run_id, "int8_before_fallback")  # the file before it is kept
        assert "int8/top1_agreement" not in m  # torch's integer reference no longer describes the file
    else:  # within the target on the validation split already, or no layer's gain beyond noise: nothing float
        assert m["int8/float_conv"] == 0 and not _artifacts(tracking_uri, result.run_id, "int8_before_fallback")
        assert m["fallback/met"] == 1 or all(d["action"] in ("rejected", "not tried", "stopped", "none kept")
                                             for d in fallback["decisions"])
    assert run.data.tags["edgeqat.fallback"].startswith(f"{len(fallback['chosen'])} layer(s) float, "
                                                        f"{len(fallback['unrounded'])} activation(s) unrounded")

    # `edgeqat sensitivity RUN_ID` on the finished run: the QAT model rebuilt from its checkpoint exports
    # the run's file again (else it refuses), so its unrounded weights give the very rows the run logged.
    from edgeqat.pipeline.run_sensitivity import sensitivity_of_run

    client = MlflowClient(tracking_uri)
    again = sensitivity_of_run(client, result.run_id, scope="weights")
    assert again.int8_accuracy == report["int8_accuracy"] and again.n_images == report["n_images"]
    assert {r.layer: r.accuracy for r in again.layers} == {r["layer"]: r["accuracy"] for r in report["layers"]}
    tags = _run(tracking_uri, result.run_id).data.tags
    assert tags["edgeqat.sensitivity_of"] == ("int8_before_fallback/model.onnx" if fallback["n_float"] else
                                              "int8/model.onnx")
    assert tags["edgeqat.sensitivity_scope"] == "weights" and _run(tracking_uri, result.run_id).info.status == "FINISHED"
    proc = subprocess.run([sys.executable, "-m", "edgeqat", "sensitivity", result.run_id, "--scope", "layer",
                           "--images", "64", "--top", "3", "--tracking-uri", tracking_uri],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "most recovered left float (layer)" in proc.stdout and len(proc.stdout.splitlines()) == 5
    layer_report = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/int8/sensitivity.json")
    layer_rows = [row for row in layer_report["layers"] if row["kind"] == "layer"]
    assert layer_report["scope"] == "layer" and layer_report["n_images"] == 64 and len(layer_rows) == 16
    assert all(row["float_kernels"] >= layer_report["base_float_kernels"] + 1 for row in layer_rows)


    # A checkpoint that does not export the run's file (one weight nudged) would describe another model.
    import torch

    from edgeqat.errors import EdgeqatError

    meta = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/checkpoints/qat/metadata.json")
    path = Path(client.download_artifacts(result.run_id, f"checkpoints/qat/{meta['files'][0]}", str(tmp_path)))
    state = torch.load(path, map_location="cpu", weights_only=False)
    key = next(k for k, v in state["state_dict"].items() if k.startswith("backbone.") and k.endswith("weight")
               and v.ndim == 4)
    state["state_dict"][key] = state["state_dict"][key] * 1.5
    torch.save(state, path)
    client.log_artifact(result.run_id, str(path), "checkpoints/qat")
    with pytest.raises(EdgeqatError, match="does not export the run's INT8 file again"):
        sensitivity_of_run(client, result.run_id, images=32)
    with pytest.raises(EdgeqatError, match="no run 'nope'"):
        sensitivity_of_run(client, "nope")


def test_sensitivity_of_an_fp32_run_says_there_is_no_int8_model(tracking_uri: str) -> None:
    from edgeqat.errors import EdgeqatError
    from edgeqat.pipeline.run_sensitivity import sensitivity_of_run

    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("fp32-only"))
    client.log_text(run.info.run_id, "quant:\n  mode: fp32\n", "config/config.yaml")
    client.set_terminated(run.info.run_id)
    with pytest.raises(EdgeqatError, match="quant.mode=fp32: it has no INT8 model to analyse"):
        sensitivity_of_run(client, run.info.run_id)
