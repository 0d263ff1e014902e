"""The ``edgeqat`` command: ``train``, ``models list`` (and the stack/deploy verbs as they land)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from edgeqat.errors import EdgeqatError


def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from edgeqat.config import compose_config

    overrides = list(args.overrides) + shlex.split(args.overrides_string or "")
    cfg = compose_config(overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from edgeqat.train import train

    train(cfg, overrides)
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from edgeqat.models import list_backbones

    names = list_backbones(args.pattern)
    print("\n".join(names))
    return 0 if names else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeqat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, quantize and export one model (one MLflow run)")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resnet18 trainer.max_epochs=2")
    train.add_argument("--overrides", dest="overrides_string", metavar="STR",
                       help="overrides as one shell-quoted string (what `mlflow run -P overrides=...` passes)")
    train.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    train.set_defaults(func=_train)

    models = sub.add_parser("models", help="backbones")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    ls = models_sub.add_parser("list", help="list buildable backbones (timm + torchvision adapters)")
    ls.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'mobilenet*'")
    ls.set_defaults(func=_models_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeqatError as e:
        from edgeqat.tracking import fail_attached_run

        fail_attached_run(e)
        print(f"edgeqat: error: {e}", file=sys.stderr)
        return 2
