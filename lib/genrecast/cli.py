"""Command line: ``genrecast <command> --conf FILE [options]`` (see DESIGN.md, CLI contract).

Exit codes: 0 success, 2 bad usage or configuration, 1 job failure. Errors are one line on
stderr; ``--verbose`` adds the traceback and debug logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from genrecast import __version__
from genrecast.config import Config, load_config
from genrecast.errors import GenrecastError

log = logging.getLogger("genrecast")
DEFAULT_CONF = "conf/local.yaml"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "botocore", "boto3", "s3transfer", "urllib3", "numba", "fsspec", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.ingest import run_ingest
    from genrecast.spark import get_spark

    spark = get_spark(cfg)
    try:
        summary = run_ingest(cfg, spark, full=args.full)
    finally:
        spark.stop()
    print("\n".join(summary.lines()))
    return 0


def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.spark import get_spark
    from genrecast.train import run_train

    spark = get_spark(cfg)
    try:
        result = run_train(cfg, spark, workers=args.workers, epochs=args.epochs)
    finally:
        spark.stop()
    print(result.report_text)
    t = result.metrics["training"]
    print(
        f"training: {t['workers']} workers, {t['epochs_run']} epochs, {t['seconds_per_epoch']:.1f}s/epoch, "
        f"{t['train_clips_per_s_per_worker']:.0f} clips/s per worker "
        f"(input pipeline alone: {t['input_pipeline_clips_per_s_per_worker']:.0f} clips/s)"
    )
    print(f"model {result.model_id}: {result.model_uri}")
    print(f"report: {result.report_uri}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conf",
        default=DEFAULT_CONF,
        metavar="FILE",
        help=f"YAML config (default: {DEFAULT_CONF}); GENRECAST__SECTION__KEY env vars override it",
    )
    common.add_argument("--verbose", "-v", action="store_true", help="debug logging and full tracebacks")
    parser = argparse.ArgumentParser(
        prog="genrecast",
        description="Content-based music analysis in batch: audio -> log-mel dataset -> genre model. "
        "Run 'genrecast COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"genrecast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="decode the catalogue into the Petastorm mel dataset (incremental)",
        description="List catalogue.audio_uri, join catalogue.labels_uri, and write one row per "
        "clip to <storage.root>/datasets/mels (Petastorm). Incremental: tracks whose audio and "
        "label are unchanged are skipped. Unusable inputs go to <storage.root>/rejects.",
    )
    p.add_argument("--full", action="store_true", help="re-ingest every track and replace the dataset")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train the genre CNN on the mel dataset (distributed over Spark barrier tasks)",
        description="Split labelled tracks by artist/track, train the CNN with "
        "MultiWorkerMirroredStrategy on N Spark barrier tasks (one Petastorm shard each), evaluate "
        "on the test split against an MFCC + logistic-regression baseline, and publish "
        "<storage.root>/models/<model_id>/ (model, model.json, report/) as the latest model.",
    )
    p.add_argument(
        "--workers", type=_positive, help="TensorFlow workers = Spark barrier tasks (default: train.workers)"
    )
    p.add_argument(
        "--epochs", type=_positive, help="maximum epochs; early stopping may end sooner (default: train.epochs)"
    )
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        cfg = load_config(args.conf)
        return args.func(cfg, args)
    except GenrecastError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"genrecast {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"genrecast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"genrecast {args.command}: failed: {type(exc).__name__}: {first[:300]} (--verbose for the trace)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
