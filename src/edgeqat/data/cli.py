"""``edgeqat data publish SOURCE DEST``: the argparse face of :mod:`edgeqat.data.publish`.

Handlers return the exit code and let :class:`~edgeqat.errors.EdgeqatError` propagate, so the
``edgeqat`` command prints it as one line (exit 2); :func:`main` does the same when this module
runs alone (``python -m edgeqat.data.cli data publish ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgeqat.errors import EdgeqatError


def _publish(args: argparse.Namespace) -> int:
    from edgeqat.data.publish import publish_imagefolder

    result = publish_imagefolder(args.source, args.dest, endpoint_url=args.endpoint_url)
    verb = "uploaded" if result.dest.startswith("s3://") else "written"
    print(f"Published {result.source} to {result.dest}: {result.images} images in {len(result.class_counts)} "
          f"classes; {result.written} {verb}, {result.unchanged} unchanged")
    print(f"Train on it: edgeqat train {result.train_overrides()}")
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``data`` with ``publish`` on the ``edgeqat`` sub-command parsers."""
    data = subparsers.add_parser("data", help="datasets: publish a source as an ImageFolder tree (local or S3)")
    verbs = data.add_subparsers(dest="data_command", required=True)
    publish = verbs.add_parser(
        "publish", help="write a registered source as <class>/<index>.png to a directory or s3://bucket/prefix/",
        description="Write a registered source (e.g. mnist5k, digits) as an ImageFolder tree of PNGs to a local "
                    "directory or an s3:// prefix (unchanged files are not sent again); a local class-per-folder "
                    "directory is uploaded as it is. Train on it with data=imagefolder data.root=DEST.",
    )
    publish.add_argument("source", help="registered source name (digits, mnist5k, ...) or a local tree to upload")
    publish.add_argument("dest", help="local directory, or s3://bucket/prefix/ (e.g. s3://edgeqat-data/mnist5k/)")
    publish.add_argument("--endpoint-url", metavar="URL",
                         help="S3 endpoint (default: $MLFLOW_S3_ENDPOINT_URL, else $AWS_ENDPOINT_URL, else AWS)")
    publish.set_defaults(func=_publish)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``data ...`` alone, with the ``edgeqat`` command's error convention (one line, exit 2)."""
    parser = argparse.ArgumentParser(prog="edgeqat")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeqatError as e:
        print(f"edgeqat: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
