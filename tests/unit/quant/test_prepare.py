"""PREPARE: guards that refuse bad input, and train/eval behaviour of the prepared model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeqat.quant import QATModel, QuantizationError, freeze_bn_stats, freeze_observers, prepare_qat
from tests.unit.quant.tiny import conv_bn, synthetic_batch


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent Python control flow: not capturable
            return self.conv(x)
        return x


class _Net(nn.Module):
    def __init__(self, gated: bool = False) -> None:
        super().__init__()
        self.features = conv_bn(3, 8, 3, act=nn.ReLU)
        self.gate = _Gated() if gated else nn.Identity()
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate(self.features(x))
        return self.fc(self.drop(x.mean((2, 3))))


def _example() -> torch.Tensor:
    return synthetic_batch(2, seed=0, res=16)[0]


def _bn_running_mean(model: QATModel) -> torch.Tensor:
    return next(b for n, b in model.named_buffers() if n.endswith("running_mean")).clone()


def test_zero_bn_weight_is_refused_not_nan() -> None:
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        net.features[1].weight[3] = 0.0
    with pytest.raises(QuantizationError, match=r"features\.1.*1/8 channels.*zero_init_last=False"):
        prepare_qat(net, _example())


def test_fresh_timm_resnet_trap_is_caught() -> None:
    import timm

    model = timm.create_model("test_resnet", num_classes=4)  # zero_init_last=True by default
    with pytest.raises(QuantizationError, match="BatchNorm weight exactly 0"):
        prepare_qat(model, torch.randn(2, 3, 32, 32))


def test_non_finite_parameter_is_refused() -> None:
    net = _Net()
    with torch.no_grad():
        net.fc.weight[0, 0] = float("nan")
    with pytest.raises(QuantizationError, match=r"fc\.weight"):
        prepare_qat(net, _example())


def test_data_dependent_control_flow_names_the_module() -> None:
    with pytest.raises(QuantizationError) as info:
        prepare_qat(_Net(gated=True), _Example := _example())
    message = str(info.value)
    assert "gate (_Gated)" in message and "torch.cond" in message and "FP32" in message


def test_unknown_float_module_suggests_the_right_name() -> None:
    with pytest.raises(QuantizationError, match=r"'feature'.*Did you mean.*'features'"):
        prepare_qat(_Net(), _example(), float_modules=["feature"])


def test_float_modules_stay_float() -> None:
    from torchao.quantization.pt2e import FakeQuantizeBase

    all_quant = prepare_qat(_Net(), _example())
    fc_float = prepare_qat(_Net(), _example(), float_modules=["fc"])
    count = lambda m: sum(isinstance(x, FakeQuantizeBase) for x in m.modules())  # noqa: E731
    assert count(fc_float) < count(all_quant)


def test_model_with_nothing_to_quantize_is_refused() -> None:
    with pytest.raises(QuantizationError, match="no op"):
        prepare_qat(nn.Sequential(nn.Flatten(), nn.Softplus()), torch.randn(2, 3, 4, 4))


def test_train_eval_switch_applies_on_the_first_call() -> None:
    torch.manual_seed(0)
    model = prepare_qat(_Net(), _example())
    x = synthetic_batch(8, seed=1, res=16)[0]
    model.train()
    model(x)
    before = _bn_running_mean(model)
    model.eval()
    model(x)  # first call after the switch must already be eval: BN stats untouched
    assert torch.equal(before, _bn_running_mean(model))
    out1, out2 = model(x), model(x)
    assert torch.equal(out1, out2), "eval must be deterministic (no dropout, no observer updates)"
    # Lightning restores modes by assigning .training directly, bypassing train():
    for m in model.modules():
        m.training = True
    model(x)
    assert not torch.equal(before, _bn_running_mean(model)), "BN must train again after a direct assignment"


def test_dropout_keeps_its_probability_across_switches() -> None:
    model = prepare_qat(_Net(), _example())
    for mode in (False, True, False, True):
        model.train(mode)
        model(_example())
    probs = [n.args[1] for n in model.graph_module.graph.nodes if n.target is torch.ops.aten.dropout.default]
    assert probs == [0.3]


def test_freezes_hold_across_train_eval() -> None:
    from torchao.quantization.pt2e import FakeQuantizeBase

    torch.manual_seed(0)
    model = prepare_qat(_Net(), _example())
    x = synthetic_batch(8, seed=2, res=16)[0]
    model.train()
    model(x)
    freeze_observers(model)
    freeze_bn_stats(model)
    scales = [m.scale.clone() for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    stats = _bn_running_mean(model)
    model.eval()
    model.train()
    model(3 * x)
    assert torch.equal(stats, _bn_running_mean(model))
    assert all(torch.equal(a, m.scale) for a, m in zip(scales, [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]))


def test_deepcopy_keeps_behaviour() -> None:
    torch.manual_seed(0)
    model = prepare_qat(_Net(), _example())
    model.train()
    model(_example())
    model.eval()
    clone = copy.deepcopy(model)
    x = _example()
    assert torch.equal(model(x), clone(x))


def test_freeze_rejects_plain_modules() -> None:
    with pytest.raises(TypeError, match="prepare_qat"):
        freeze_observers(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_bn_eps_and_momentum_survive_prepare() -> None:
    """torchao's QAT conv-BN rewrite hard-codes eps=1e-5/momentum=0.1; torchvision nets use 1e-3."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3, momentum=0.01), nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(1e-4, 1e-2)  # small variances: eps decides the output
    net.eval()
    x = torch.randn(16, 3, 16, 16)
    model = prepare_qat(net, x)
    bn_args = [n.args[6:8] for n in model.graph_module.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert bn_args == [(0.01, 1e-3), (0.1, 1e-3)]
    freeze_bn_stats(model)
    model.train()
    model(x)  # calibrate observers only
    model.eval()
    with torch.no_grad():
        reference = net(x)
        assert (model(x) - reference).abs().max() < 0.05 * reference.abs().max()


def test_training_fake_quant_uses_the_weight_qparams_convert_will_use() -> None:
    """Trained-against weights == exported weights: each weight fake-quant's live scale equals its
    observer's qparams, which convert bakes in (the fused kernel's symmetric scale did not: /127.5
    against /127, one step off per weight, which compounds through a MobileNet)."""
    model = prepare_qat(_Net(), _example())
    model.train()
    with torch.no_grad():
        model(synthetic_batch(16, seed=1, res=16)[0])
    weight_fqs = [m for m in model.modules() if hasattr(m, "activation_post_process")
                  and m.qscheme == torch.per_channel_symmetric]
    assert weight_fqs
    for fq in weight_fqs:
        scale, _ = fq.calculate_qparams()
        assert torch.equal(fq.scale, scale)


def test_float_module_between_quantized_neighbours_stays_float_in_ort(monkeypatch, tmp_path) -> None:
    """ORT's WeightBiasQuantization would quantize a float conv read from a DequantizeLinear and feeding a
    QuantizeLinear; the export's ``keep_float_convs_float`` pass stops it."""
    from edgeqat.quant import convert, evaluate_onnx, export_onnx, inspect_ort_graph
    from edgeqat.quant import onnx_passes
    from tests.unit.quant.tiny import build, train

    model = build("tiny_mobile")
    train(model, steps=20, lr=1e-2)
    prepared = prepare_qat(model, synthetic_batch(4, seed=99)[0], float_modules=["pw"])  # 1x1 conv + BN, mid-net
    train(prepared, steps=4, lr=1e-3, seed=1)
    freeze_observers(prepared)
    freeze_bn_stats(prepared)
    converted, example = convert(prepared), synthetic_batch(1, seed=98)[0]
    images, labels = (t.numpy() for t in synthetic_batch(128, seed=7))
    reference = prepared.eval()(torch.from_numpy(images)).detach().numpy()

    path = export_onnx(converted, example, tmp_path / "kept.onnx")
    report = inspect_ort_graph(path)
    assert report.count("Conv") + report.count("FusedConv") == 1 and report.count("QLinearConv") == 8
    (conv,) = [n for n in report.float_nodes if n.op_type in ("Conv", "FusedConv")]
    assert "quant.float_modules" in conv.reason
    assert evaluate_onnx(path, images, labels, reference_logits=reference).top1_agreement == 1.0

    without = {k: v for k, v in onnx_passes._PASSES.items() if k != "keep_float_convs_float"}
    monkeypatch.setattr(onnx_passes, "_PASSES", without)
    quantized_by_ort = inspect_ort_graph(export_onnx(converted, example, tmp_path / "lost.onnx"))
    assert quantized_by_ort.count("Conv") + quantized_by_ort.count("FusedConv") == 0  # the trap this guards


def test_training_the_prepared_model_leaves_the_fp32_model_alone() -> None:
    """A second prepare_qat of the same FP32 model starts from the FP32 weights, not the first QAT's."""
    model = _Net()
    before = copy.deepcopy(model.state_dict())
    prepared = prepare_qat(model, _example())
    prepared.train()
    opt = torch.optim.SGD(prepared.parameters(), lr=0.1)
    x, y = synthetic_batch(8, seed=1, res=16)
    nn.functional.cross_entropy(prepared(x), y).backward()
    opt.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
