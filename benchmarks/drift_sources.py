"""Where each family's INT8 file departs from its own definition in ORT, on the real test split.

    python benchmarks/drift_sources.py [--models resnet18 ...] [--weight-ranges auto int8]

Trains each family with the FP32 recipe of ``qat_accuracy.py`` (one ``edgeqat train`` subprocess per
model into a throw-away store), then runs ``edgeqat.quant.localize_drift`` on its INT8 file and the
1,000-image mnist5k test split: ORT's integer kernels vs the file's QDQ definition computed in float,
op by op. Next to it, the run's own ``int8/max_step_drift`` (ORT vs torch fake-quant),
``int8/within_step_fraction`` and agreement. ``--weight-ranges auto int8`` quantizes one FP32 model
both ways. Writes ``benchmarks/results/drift_sources.json``.

Reading it: ``max_source_steps`` 1 = every difference starts as a one-step rounding tie; more = a
kernel that computes other integers (AVX2's saturating u8s8 pairs under ``int8``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _machine import machine_facts
from qat_accuracy import MODELS, run_model

KEYS = ["test/acc_int8", "int8/max_step_drift", "int8/within_step_fraction", "int8/top1_agreement"]


def test_images(seed: int, in_chans: int) -> np.ndarray:
    """The test split every run of this seed evaluates on (the default mnist5k data config)."""
    import torch

    from edgeqat.data import ClassificationDataModule

    dm = ClassificationDataModule("mnist5k", image_size=32, in_chans=in_chans, seed=seed)
    dm.setup()
    test = dm.datasets["test"]
    return torch.stack([test[i][0] for i in range(len(test))]).numpy()


def input_channels(onnx_path: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return model.graph.input[0].type.tensor_type.shape.dim[1].dim_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--weight-ranges", nargs="+", default=["auto"])
    parser.add_argument("--extra", default="", help="extra overrides for every run, space separated")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "drift_sources.json"))
    args = parser.parse_args()

    from edgeqat.quant import localize_drift

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        for model in args.models:
            extra = args.extra.split()
            fp32 = run_model(model, args.seed, extra, store, tag="-fp32", quant="quant=fp32")
            if "error" in fp32:
                rows.append({"model": model, "error": fp32["error"]})
                continue
            init = f"quant.init_checkpoint=runs:/{fp32['run_id']}/checkpoints/fp32/best.ckpt"
            for weight_range in args.weight_ranges:
                run = run_model(model, args.seed, [init, f"quant.weight_range={weight_range}", *extra], store,
                                tag=f"-{weight_range}")
                row = {"model": model, "weight_range": weight_range,
                       "fp32_recipe": f"conf/model/{model}.yaml", "seed": args.seed}
                if "error" in run:
                    rows.append({**row, "error": run["error"]})
                    continue
                onnx_path = store / "outputs" / run["run_id"] / "models" / "int8" / "model.onnx"
                report = localize_drift(onnx_path, test_images(args.seed, input_channels(onnx_path)))
                rows.append({**row, "run": {k: run[k] for k in KEYS if k in run}, "drift_sources": report.to_dict()})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "drift_sources"}),
                      {k: v for k, v in report.to_dict().items() if k != "sources"}, flush=True)
                Path(args.out).write_text(json.dumps({"machine": machine_facts(), "rows": rows}, indent=1))
    Path(args.out).write_text(json.dumps({"machine": machine_facts(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
