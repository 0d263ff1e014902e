"""``edgeqat data publish SOURCE DEST``: the argparse face of :mod:`edgeqat.data.publish`.

Handlers return the exit code and let :class:`~edgeqat.errors.EdgeqatError` propagate, so the
``edgeqat`` command prints it as one line (exit 2).
"""

from __future__ import annotations

import argparse



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
