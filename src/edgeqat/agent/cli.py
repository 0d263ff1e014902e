"""``edgeqat agent``: run the device agent, or classify images with the model it activated.

::

    edgeqat agent [--target NAME] [--source URL] [--home DIR] [--public-key PATH] [--interval S] [--once]
    edgeqat agent predict IMAGE... [--home DIR | --target NAME] [--top-k K]

Bad input is one line on stderr that names the fix, exit 2. ``--once`` prints the poll's result and
exits 0 (activated/unchanged) or 1 (refused/unreachable); without it the agent runs until SIGINT or
SIGTERM. Nothing here imports more than the agent itself (no torch, no MLflow): it runs on the device.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from edgeqat.errors import EdgeqatError

__all__ = ["main"]

PROG = "edgeqat agent"
DEFAULT_TARGET = "local"
DEFAULT_PUBLIC_KEY = ".edgeqat/deploy_signing_key.pub"
SOURCE_ENV, HOME_ENV = "EDGEQAT_AGENT_SOURCE", "EDGEQAT_AGENT_HOME"


def default_source(target: str) -> str:
    return f"s3://edgeqat-artifacts/deployments/{target}/"


def default_home(target: str) -> Path:
    return Path(".edgeqat") / "agent" / target


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the CLI's convention), not usage + message."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see: {self.prog} --help)")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def _run_parser() -> _Parser:
    p = _Parser(prog=PROG, description="Poll a deployment location, verify signed releases and activate them. "
                f"See also: {PROG} predict --help")
    p.add_argument("--target", default=DEFAULT_TARGET, help="deployment target (default: %(default)s)")
    p.add_argument("--source", help=f"location to poll (default: ${SOURCE_ENV} or {default_source('<target>')})")
    p.add_argument("--home", help=f"local state directory (default: ${HOME_ENV} or {default_home('<target>')})")
    p.add_argument("--public-key", default=DEFAULT_PUBLIC_KEY, help="Ed25519 public key PEM (default: %(default)s)")
    p.add_argument("--interval", type=_positive(float), default=2.0, help="seconds between polls (default: 2)")
    p.add_argument("--max-backoff", type=_positive(float), default=60.0,
                   help="longest wait between polls while the store is unreachable (default: 60)")
    p.add_argument("--agent-id", help="name of this device's heartbeat (default: the hostname)")
    p.add_argument("--once", action="store_true", help="poll once, print the result and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _predict_parser() -> _Parser:
    p = _Parser(prog=f"{PROG} predict", description="Classify images with the model the agent activated.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, PGM/PPM or .npy files")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--home", help=f"the agent's home (default: ${HOME_ENV} or {default_home('<target>')})")
    where.add_argument("--target", default=DEFAULT_TARGET, help="target whose default home to use")
    p.add_argument("--top-k", type=_positive(int), default=1, help="classes printed per image (default: 1)")
    return p


def _home(arg: str | None, target: str) -> Path:
    return Path(arg or os.environ.get(HOME_ENV) or default_home(target))


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the loop ends after the current poll) instead of a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("edgeqat.agent")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _run(args: argparse.Namespace) -> int:
    from edgeqat.agent.agent import Agent
    from edgeqat.agent.keys import load_public_key
    from edgeqat.agent.store import open_store

    source = args.source or os.environ.get(SOURCE_ENV) or default_source(args.target)
    _setup_logging(args.verbose)
    key = load_public_key(args.public_key)
    agent = Agent(open_store(source), _home(args.home, args.target), key, args.target, args.agent_id)
    if args.once:
        result = agent.poll_once()
        print(result)
        return 0 if result.state in ("activated", "unchanged") else 1
    stop = threading.Event()
    logging.getLogger("edgeqat.agent").info("agent %s polling %s every %.1f s for target %s", agent.agent_id,
                                            source, args.interval, args.target)
    with _stop_on_signals(stop):
        agent.run(stop, interval_s=args.interval, max_backoff_s=max(args.max_backoff, args.interval))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from edgeqat.agent.predictor import Predictor

    predictor = Predictor(_home(args.home, args.target))
    for path, name, prob in predictor.predict(args.images, top_k=args.top_k):
        print(f"{path}\t{name}\t{prob:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edgeqat agent`` / ``edgeqat-agent`` / ``python -m edgeqat.agent``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["predict"]:
            return _predict(_predict_parser().parse_args(argv[1:]))
        return _run(_run_parser().parse_args(argv))
    except _UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except EdgeqatError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return 130
