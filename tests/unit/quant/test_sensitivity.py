"""Per-layer sensitivity: each row is a real file with that layer float in ORT, and it finds a hard layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeqat.quant import convert, export_onnx, inspect_ort_graph, ptq_onnx, run_onnx
from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.fallback import FallbackBudget, choose_fallback, paired_drop_margin, significant_gain
from edgeqat.quant.sensitivity import float_weights_of, layer_sensitivity, leave_float, quantized_layers
from edgeqat.quant.unround import quantized_activations
from tests.unit.quant.tiny import synthetic_batch


def _weight_initializer(model: onnx.ModelProto, layer: str) -> onnx.TensorProto:
    node = next(n for n in model.graph.node if n.name == layer)
    dq = next(n for n in model.graph.node if node.input[1] in n.output)
    return next(i for i in model.graph.initializer if i.name == dq.input[0])


@pytest.fixture(scope="module")
def qat_float_weights(artifacts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """The test_resnet QAT model exported again, unfolded: its file and its unrounded weights."""
    a = artifacts["test_resnet"]
    float_weights: dict[str, np.ndarray] = {}
    path = export_onnx(convert(a.prepared, fold_weights=False), synthetic_batch(1, seed=98)[0],
                       tmp_path_factory.mktemp("sensitivity") / "int8.onnx", weights=a.weights, float_weights=float_weights)
    return path, float_weights


def test_the_qat_export_keeps_the_unrounded_weights_of_every_quantized_layer(artifacts, qat_float_weights) -> None:
    a = artifacts["test_resnet"]
    again, float_weights = qat_float_weights
    x = a.images[:64]
    np.testing.assert_array_equal(run_onnx(again, x), run_onnx(a.int8_onnx, x))  # the same INT8 model
    model = onnx.load(str(a.int8_onnx))
    layers = quantized_layers(model)
    assert len(layers) == 16 and set(layers) == set(float_weights)  # 15 convs and the classifier
    for layer in layers:
        dq = next(n for n in model.graph.node if next(m for m in model.graph.node if m.name == layer).input[1] in n.output)
        ints = numpy_helper.to_array(_weight_initializer(model, layer)).astype(np.float32)
        scale = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == dq.input[1]))
        scale = scale.reshape((-1,) + (1,) * (ints.ndim - 1))
        rounded = np.clip(np.rint(float_weights[layer] / scale), ints.min(), ints.max())
        assert np.mean(rounded != ints) < 1e-3, layer  # the file's ints are these weights rounded (ties aside)
        assert not np.allclose(float_weights[layer], ints * scale), layer  # and these are not on the grid


def test_leave_float_runs_that_layer_in_float_and_nothing_else(artifacts, qat_float_weights, tmp_path: Path) -> None:
    a = artifacts["test_resnet"]
    model = onnx.load(str(a.int8_onnx))
    fp32 = qat_float_weights[1]
    base = inspect_ort_graph(a.int8_onnx)
    layer = quantized_layers(model)[3]
    variant = tmp_path / "variant.onnx"
    onnx.save(leave_float(model, [layer], {layer: fp32[layer]}), str(variant))
    report = inspect_ort_graph(variant)
    assert report.count("QLinearConv") == base.count("QLinearConv") - 1
    assert report.count("Conv") + report.count("FusedConv") + report.count("NchwcConv") == 1
    assert not np.array_equal(run_onnx(variant, a.images[:32]), run_onnx(a.int8_onnx, a.images[:32]))
    with pytest.raises(QuantizationError, match="is not a quantized conv/gemm"):
        leave_float(model, ["no_such_node"], fp32)
    with pytest.raises(QuantizationError, match="no float weight of shape"):
        leave_float(model, [layer], {layer: np.zeros((1, 1), np.float32)})


@pytest.mark.slow
def test_a_grey_stem_left_float_stays_float(tmp_path: Path) -> None:
    """One input channel (MNIST, Fashion-MNIST): a per-channel DequantizeLinear of one channel is
    per-tensor to ORT, which would quantize the float weights back (``keep_float_convs_float``)."""
    import timm
    import torch

    from edgeqat.quant import freeze_bn_stats, freeze_observers, prepare_qat

    torch.manual_seed(0)
    grey = synthetic_batch(48, seed=3)[0].mean(1, keepdim=True)
    prepared = prepare_qat(timm.create_model("test_resnet", num_classes=4, in_chans=1, zero_init_last=False).eval(),
                           grey[:2])
    prepared.train()
    for i in range(3):
        prepared(grey[16 * i:16 * i + 16])
    freeze_observers(prepared)
    freeze_bn_stats(prepared)
    path = export_onnx(convert(prepared), grey[:1], tmp_path / "grey.onnx")
    float_weights: dict[str, np.ndarray] = {}
    export_onnx(convert(prepared, fold_weights=False), grey[:1], tmp_path / "unfolded.onnx", float_weights=float_weights)
    model = onnx.load(str(path))
    stem = quantized_layers(model)[0]
    onnx.save(leave_float(model, [stem], float_weights), str(tmp_path / "stem_float.onnx"))
    report = inspect_ort_graph(tmp_path / "stem_float.onnx")
    assert report.count("Conv") + report.count("FusedConv") + report.count("NchwcConv") == 1
    assert report.count("QLinearConv") == inspect_ort_graph(path).count("QLinearConv") - 1


@pytest.fixture(scope="module")
def damaged_ptq(artifacts, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ORT's PTQ of the FP32 file, then one conv's int8 weights shuffled within each output channel (a
    layer whose rounding destroys it, in the extreme; this tiny net shrugs off even 2-bit weights)."""
    a = artifacts["test_resnet"]
    tmp = tmp_path_factory.mktemp("damaged")
    calibration = [a.images[i:i + 32] for i in range(0, 128, 32)]
    ptq = onnx.load(str(ptq_onnx(a.fp32_onnx, calibration, tmp / "ptq.onnx")))
    images, labels = a.images[128:], a.labels[128:]
    layers = quantized_layers(ptq)
    weight = _weight_initializer(ptq, layers[1])
    ints = numpy_helper.to_array(weight).reshape(weight.dims[0], -1).copy()
    rng = np.random.default_rng(0)
    for row in ints:
        rng.shuffle(row)
    weight.CopyFrom(numpy_helper.from_array(ints.reshape(tuple(weight.dims)), weight.name))
    onnx.save(ptq, str(tmp / "damaged.onnx"))
    return {"path": tmp / "damaged.onnx", "hard": layers[1], "layers": layers, "images": images, "labels": labels,
            "ptq_accuracy": float((run_onnx(tmp / "ptq.onnx", images).argmax(1) == labels).mean()),
            "float_weights": float_weights_of(onnx.load(str(a.fp32_onnx)))}


def test_sensitivity_finds_the_layer_made_hard_to_quantize(damaged_ptq) -> None:
    """The damaged layer tops the report, and leaving it float brings the accuracy back."""
    d = damaged_ptq
    report = layer_sensitivity(d["path"], d["float_weights"], d["images"], d["labels"], layers=d["layers"][:5],
                               profile_runs=5)
    assert report.int8_accuracy < d["ptq_accuracy"] - 0.2, "the damaged layer must hurt for the test to mean anything"
    top, rest = report.layers[0], report.layers[1:]
    assert top.layer == d["hard"] and top.recovered > 0.2 and top.accuracy >= d["ptq_accuracy"] - 0.03
    assert len(rest) == 4 and all(row.recovered < 0.05 for row in rest)
    assert all(row.float_kernels == report.base_float_kernels + 1 for row in report.layers)
    assert all(0 < row.latency_share < 1 for row in report.layers)


def test_the_fallback_meets_its_target_within_budget_and_says_why(damaged_ptq, tmp_path: Path) -> None:
    d = damaged_ptq
    report = layer_sensitivity(d["path"], d["float_weights"], d["images"], d["labels"], layers=d["layers"][:5],
                               profile_runs=0)
    fp32_accuracy = d["ptq_accuracy"]  # a target the damaged file misses by > 20 pt
    timing = {"iters": 5, "warmup": 1}

    met = choose_fallback(d["path"], d["float_weights"], report, d["images"], d["labels"], fp32_accuracy,
                          FallbackBudget(max_drop=0.03), tmp_path / "fallback.onnx", latency=timing)
    assert met.met and met.chosen == [d["hard"]] and met.accuracy_after >= fp32_accuracy - 0.03
    assert met.decisions[0]["action"] == "float" and "recovers" in met.decisions[0]["reason"]
    out = inspect_ort_graph(tmp_path / "fallback.onnx")
    assert out.count("Conv") + out.count("FusedConv") + out.count("NchwcConv") == 1  # the artifact computes it in float
    assert float((run_onnx(tmp_path / "fallback.onnx", d["images"]).argmax(1) == d["labels"]).mean()) == met.accuracy_after

    no_layers = choose_fallback(d["path"], d["float_weights"], report, d["images"], d["labels"], fp32_accuracy,
                                FallbackBudget(max_drop=0.03, max_layers=0), tmp_path / "none.onnx", latency=timing)
    assert not no_layers.met and no_layers.chosen == [] and "max_layers=0 reached" in no_layers.decisions[0]["reason"]
    no_time = choose_fallback(d["path"], d["float_weights"], report, d["images"], d["labels"], fp32_accuracy,
                              FallbackBudget(max_drop=0.03, max_latency_pct=-50), tmp_path / "fast.onnx", latency=timing)
    assert not no_time.met and no_time.decisions[0]["action"] == "skipped" and "max_latency_pct" in no_time.decisions[0]["reason"]


def _coarsen_input_activation(model: onnx.ModelProto, layers: list[str], factor: float) -> str:
    """Scale up the rounding step of one conv's input activation (that conv its only reader); its name."""
    producers = {out: n for n in model.graph.node for out in n.output}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    inits = {i.name: i for i in model.graph.initializer}
    for layer in layers[1:]:
        node = next(n for n in model.graph.node if n.name == layer)
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or readers[dq.output[0]] != 1 or readers[dq.input[1]] != 2:
            continue  # its input is read elsewhere too, or its scale is shared beyond this Q/DQ pair
        scale = inits[dq.input[1]]
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
        return layer
    raise AssertionError("no conv reads an activation of its own")


@pytest.fixture(scope="module")
def coarse_activation(damaged_ptq, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ORT's PTQ with one conv's input activation rounded to a few levels: a loss no weight explains."""
    d = damaged_ptq
    tmp = tmp_path_factory.mktemp("coarse")
    model = onnx.load(str(d["path"].parent / "ptq.onnx"))
    layer = _coarsen_input_activation(model, d["layers"], 1000.0)
    onnx.save(model, str(tmp / "coarse.onnx"))
    return {**d, "path": tmp / "coarse.onnx", "hard": layer}


def test_the_layer_scope_also_leaves_the_input_activation_float(coarse_activation, tmp_path: Path) -> None:
    """Weights alone cannot undo an activation's rounding; ``scope="layer"`` reads the unrounded tensor."""
    c = coarse_activation
    images, labels = c["images"], c["labels"]
    model = onnx.load(str(c["path"]))
    coarse = float((run_onnx(c["path"], images).argmax(1) == labels).mean())
    assert coarse < c["ptq_accuracy"] - 0.15, "the coarse activation must hurt for the test to mean anything"
    accuracy = {}
    for scope in ("weights", "layer"):
        path = tmp_path / f"{scope}.onnx"
        variant = leave_float(model, [c["hard"]], c["float_weights"], scope)
        onnx.save(variant, str(path))
        node = next(n for n in variant.graph.node if n.name == c["hard"])
        reads = next((n.op_type for n in variant.graph.node if node.input[0] in n.output), "graph input")
        assert (reads == "DequantizeLinear") == (scope == "weights"), (scope, reads)
        accuracy[scope] = float((run_onnx(path, images).argmax(1) == labels).mean())
    assert accuracy["weights"] < c["ptq_accuracy"] - 0.1  # the weights were never the problem
    assert accuracy["layer"] >= c["ptq_accuracy"] - 0.03

    report = layer_sensitivity(c["path"], c["float_weights"], images, labels, layers=c["layers"][:5], profile_runs=0,
                               scope="layer")
    assert report.scope == "layer" and report.layers[0].layer == c["hard"]
    assert all(row.float_kernels >= report.base_float_kernels + 1 for row in report.layers)
    hard_input = next(n for n in model.graph.node if n.name == c["hard"]).input[0]
    rounded = next(n for n in model.graph.node if n.output[0] == hard_input).input[0]  # DQ <- Q <- the tensor
    rounded = next(n for n in model.graph.node if n.output[0] == rounded).input[0]
    with_activations = layer_sensitivity(c["path"], c["float_weights"], images, labels, layers=[], profile_runs=0,
                                         activations=None)
    top = with_activations.layers[0]  # the coarse tensor itself, left unrounded for all its readers
    assert (top.layer, top.kind) == (rounded, "activation") and top.recovered > 0.15
    assert len(with_activations.layers) == len(quantized_activations(model))
    result = choose_fallback(c["path"], c["float_weights"], report, images, labels, c["ptq_accuracy"],
                             FallbackBudget(max_drop=0.03), tmp_path / "fallback.onnx", latency={"iters": 5, "warmup": 1})
    assert result.met and result.chosen == [c["hard"]]
    with pytest.raises(QuantizationError, match="float scope 'activations'"):
        leave_float(model, [c["hard"]], c["float_weights"], "activations")



def test_a_gain_counts_only_beyond_noise() -> None:
    """Paired on the same images: what the candidate fixes minus what it breaks, against their spread."""
    before = np.zeros(1000, bool)
    before[:800] = True

    def after(fixed: int, broken: int) -> np.ndarray:
        out = before.copy()
        out[800:800 + fixed] = True
        out[:broken] = False
        return out

    assert significant_gain(before, after(3, 1), min_z=2.0) == (3, 1, False)  # +2 images: noise
    assert significant_gain(before, after(30, 5), min_z=2.0) == (30, 5, True)  # +25 > 2 * sqrt(35)
    assert significant_gain(before, after(3, 1), min_z=0.0)[2]  # 0: any net gain
    assert not significant_gain(before, after(2, 2), min_z=0.0)[2]  # a wash is no gain



def test_the_drop_margin_counts_only_the_images_the_two_disagree_on() -> None:
    fp32 = np.zeros(1000, bool)
    fp32[:800] = True
    int8 = fp32.copy()
    int8[:30], int8[800:810] = False, True  # breaks 30, fixes 10: a drop of 2 pt
    # per image fp32 - int8 is 1 thirty times, -1 ten times: variance (40 - 1000 * 0.02**2) / 999
    assert paired_drop_margin(fp32, int8, z=2.0) == pytest.approx(2 * np.sqrt(39.6 / 999 / 1000))
    assert paired_drop_margin(np.tile(fp32, 4), np.tile(int8, 4), z=2.0) == pytest.approx(
        paired_drop_margin(fp32, int8, z=2.0) / 2, rel=1e-3)  # 4x the images: half the margin
    assert paired_drop_margin(fp32, fp32, z=2.0) == 0 and paired_drop_margin(fp32, int8, z=0) == 0

@pytest.fixture(scope="module")
def spread_loss(damaged_ptq, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ORT's PTQ with every activation between the input and the head rounded 120x coarser: a loss
    spread over ~20 roundings, as ORT's PTQ of MobileNetV3 has (``quant/unround.py``)."""
    d = damaged_ptq
    model = onnx.load(str(d["path"].parent / "ptq.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    coarse = quantized_activations(model)[1:-3]
    for scale in {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in coarse}:
        inits[scale].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[scale]) * 120, scale))
    path = tmp_path_factory.mktemp("spread") / "spread.onnx"
    onnx.save(model, str(path))
    return {**d, "path": path, "ptq": d["path"].parent / "ptq.onnx"}


def test_a_spread_loss_is_undone_by_the_smallest_set_the_greedy_pass_cannot_find(spread_loss, tmp_path: Path) -> None:
    """No single activation clears the gate; the best k together meet the target, and k - 1 do not."""
    s = spread_loss
    images, labels = s["images"], s["labels"]
    report = layer_sensitivity(s["path"], s["float_weights"], images, labels, layers=[], profile_runs=0,
                               activations=None)
    assert report.int8_accuracy < s["ptq_accuracy"] - 0.2, "the coarse activations must hurt for the test to mean it"
    assert {row.kind for row in report.layers} == {"activation"} and report.layers[0].recovered < 0.15
    budget = {"max_drop": 0.03, "min_z": 4.0}
    timing = {"iters": 5, "warmup": 1}

    greedy = choose_fallback(s["path"], s["float_weights"], report, images, labels, s["ptq_accuracy"],
                             FallbackBudget(**budget, grow=False), tmp_path / "greedy.onnx", latency=timing)
    assert not greedy.met and greedy.n_float == 0
    assert {d["action"] for d in greedy.decisions} <= {"rejected", "not tried"}

    grown = choose_fallback(s["path"], s["float_weights"], report, images, labels, s["ptq_accuracy"],
                            FallbackBudget(**budget), tmp_path / "grown.onnx", latency=timing)
    k = len(grown.unrounded)
    assert grown.met and grown.chosen == [] and grown.unrounded == [row.layer for row in report.layers[:k]]
    assert any(d["action"] == "set tried" for d in grown.decisions) and grown.decisions[-1]["action"] == "float"
    written = onnx.load(str(tmp_path / "grown.onnx"))
    assert not set(grown.unrounded) & set(quantized_activations(written))  # the file really leaves them unrounded
    assert float((run_onnx(tmp_path / "grown.onnx", images).argmax(1) == labels).mean()) == grown.accuracy_after
    fewer = leave_float(onnx.load(str(s["path"])), [], s["float_weights"], activations=grown.unrounded[:-1])
    onnx.save(fewer, str(tmp_path / "fewer.onnx"))
    assert float((run_onnx(tmp_path / "fewer.onnx", images).argmax(1) == labels).mean()) < grown.target_accuracy



def test_a_target_held_by_standard_errors_takes_a_set_that_meets_it_beyond_the_estimate(spread_loss,
                                                                                       tmp_path: Path) -> None:
    """``target_z``: the grown set must meet the target less ``target_z`` standard errors of its paired drop
    vs the reference, so it is larger than the set the point estimate takes, and that one falls short."""
    s = spread_loss
    images, labels = s["images"], s["labels"]
    reference = run_onnx(s["ptq"], images).argmax(1) == labels
    report = layer_sensitivity(s["path"], s["float_weights"], images, labels, layers=[], profile_runs=0,
                               activations=None)
    # 0.2 below the reference: its top 2 meet that by their estimate, not by one standard error (128 images)
    budget, timing = {"max_drop": 0.2, "min_z": 4.0}, {"iters": 5, "warmup": 1}
    with pytest.raises(ValueError, match="per-image correctness"):
        choose_fallback(s["path"], s["float_weights"], report, images, labels, float(reference.mean()),
                        FallbackBudget(**budget, target_z=1.0), tmp_path / "x.onnx", latency=timing)
    estimate = choose_fallback(s["path"], s["float_weights"], report, images, labels, reference,
                               FallbackBudget(**budget), tmp_path / "estimate.onnx", latency=timing)
    held = choose_fallback(s["path"], s["float_weights"], report, images, labels, reference,
                           FallbackBudget(**budget, target_z=1.0), tmp_path / "held.onnx", latency=timing)
    assert estimate.met and estimate.margin_after == 0 and held.met and held.margin_after > 0
    assert held.accuracy_after - held.margin_after >= held.target_accuracy == estimate.target_accuracy
    k = len(estimate.unrounded)
    assert len(held.unrounded) > k and held.unrounded[:k] == estimate.unrounded  # top-k of the same order
    est_correct = run_onnx(tmp_path / "estimate.onnx", images).argmax(1) == labels
    assert est_correct.mean() >= estimate.target_accuracy  # the estimate's set meets the target by its estimate,
    assert est_correct.mean() - paired_drop_margin(reference, est_correct, 1.0) < estimate.target_accuracy  # only
    assert any("by 1 standard errors" in d["reason"] for d in held.decisions)


def test_a_candidate_that_leaves_no_integer_kernel_is_refused(damaged_ptq, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Aimed low enough, a grown set can float every conv: that file is the FP32 model, which verify
    would refuse to publish as INT8 (it failed a MobileNetV3 run), so the fallback must not pick it."""
    import edgeqat.quant.report as report_module

    d = damaged_ptq
    real = report_module.inspect_ort_graph

    def as_if_all_float(path):  # the file ORT really builds, its integer kernels counted as none
        graph = real(path)
        graph.op_counts = {op: n for op, n in graph.op_counts.items() if op not in report_module.INTEGER_OPS}
        return graph

    monkeypatch.setattr(report_module, "inspect_ort_graph", as_if_all_float)
    report = layer_sensitivity(d["path"], d["float_weights"], d["images"], d["labels"], layers=d["layers"][:5],
                               profile_runs=0)
    result = choose_fallback(d["path"], d["float_weights"], report, d["images"], d["labels"], d["ptq_accuracy"],
                             FallbackBudget(max_drop=0.03), tmp_path / "fallback.onnx", latency={"iters": 5, "warmup": 1})
    assert not result.met and result.n_float == 0
    skipped = [x for x in result.decisions if x["action"] in ("skipped", "set out of bounds")]
    assert skipped and all("no integer kernel" in x["reason"] for x in skipped)
    assert result.decisions[-1]["action"] == "none kept"


def test_the_bisection_searches_below_a_set_that_is_out_of_bounds(spread_loss, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Doubling can overshoot into sets out of bounds (here: 6 or more activations unrounded leave, as if,
    no integer kernel); the smallest good set lies below them, and bisection must look there."""
    import edgeqat.quant.report as report_module

    s = spread_loss
    images, labels = s["images"], s["labels"]
    report = layer_sensitivity(s["path"], s["float_weights"], images, labels, layers=[], profile_runs=0,
                               activations=None)
    rounded = len(quantized_activations(onnx.load(str(s["path"]))))
    real = report_module.inspect_ort_graph

    def kernel_free_from_6(path):
        graph = real(path)
        if rounded - len(quantized_activations(onnx.load(str(path)))) >= 6:
            graph.op_counts = {op: n for op, n in graph.op_counts.items() if op not in report_module.INTEGER_OPS}
        return graph

    monkeypatch.setattr(report_module, "inspect_ort_graph", kernel_free_from_6)
    budget = FallbackBudget(max_drop=0.1, min_z=4.0)  # the top 5 meet it here (the top 4 do not), beyond noise
    result = choose_fallback(s["path"], s["float_weights"], report, images, labels, s["ptq_accuracy"], budget,
                             tmp_path / "fallback.onnx", latency={"iters": 5, "warmup": 1})
    sizes = {d["layer"].split(" remaining")[0]: d["action"] for d in result.decisions if d["layer"].startswith("top ")}
    assert sizes["top 8"] == "set out of bounds" and sizes["top 6"] == "set out of bounds"  # doubled past, then below
    assert result.met and len(result.unrounded) == 5 and sizes["top 4"] == "set tried"
