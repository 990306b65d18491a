"""Command line: ``genrecast <command> --conf FILE [options]`` (see DESIGN.md, CLI contract).

Exit codes: 0 success, 2 bad usage or configuration, 1 job failure. Errors are one line on
stderr; ``--verbose`` adds the traceback and debug logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from genrecast import __version__
from genrecast.config import Config, load_config
from genrecast.errors import ConfigError, GenrecastError

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


def cmd_demo_catalogue(cfg: Config, args: argparse.Namespace) -> int:
    import time

    from genrecast.democat import render_demo_catalogue
    from genrecast.storage import Storage

    started = time.monotonic()
    demo = cfg.demo
    if not cfg.catalogue.labels_uri:
        raise ConfigError("demo-catalogue writes labels: set catalogue.labels_uri")
    summary = render_demo_catalogue(
        Storage.from_config(cfg),
        cfg.catalogue.audio_uri,
        cfg.catalogue.labels_uri,
        args.genres or cfg.genres,
        args.tracks_per_genre or demo.tracks_per_genre,
        args.seconds or demo.seconds,
        demo.seed if args.seed is None else args.seed,
        cache_dir=demo.cache_dir,
        progress=lambda line: log.info("demo-catalogue %s", line),
        workers=demo.workers,
    )
    per_genre = ", ".join(f"{g} {n}" for g, n in sorted(summary.per_genre.items()))
    print(f"demo catalogue: {summary.tracks} tracks ({per_genre}) in {cfg.catalogue.audio_uri}")
    print(
        f"  {summary.written} written, {summary.unchanged} unchanged, {summary.cache_hits} from cache, "
        f"{len(summary.failures)} failed; {summary.total_bytes / 1e6:.1f} MB; "
        f"{time.monotonic() - started:.0f}s wall ({summary.render_seconds:.0f}s of rendering)"
    )
    if summary.unsupported_genres:
        print(f"  no recipe for: {', '.join(summary.unsupported_genres)} (add audio and labels for them yourself)")
    for failure in summary.failures:
        print(f"  failed: {failure.track_id}: {failure.reason}")
    print(f"  labels: {summary.labels_uri}")
    return 0


MASS_DELETE_HELP = (
    "drop the rows of the tracks gone from the listing even when they are more than "
    "catalogue.max_delete_share of the table (default: stop with exit 2, tables unchanged)"
)


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.ingest import run_ingest
    from genrecast.spark import spark_session

    with spark_session(cfg) as spark:
        summary = run_ingest(
            cfg,
            spark,
            full=args.full,
            labels_missing_ok=args.labels_missing_ok,
            allow_mass_delete=args.allow_mass_delete,
        )
    print("\n".join(summary.lines()))
    return 0


def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.spark import spark_session
    from genrecast.train import run_train

    with spark_session(cfg) as spark:
        result = run_train(cfg, spark, workers=args.workers, epochs=args.epochs)
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


def cmd_labels_spotify(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.spotify_labels import run_spotify_labels

    if not args.verbose:  # spotipy logs its own ERROR line before ours; keep errors to one line
        logging.getLogger("spotipy.client").setLevel(logging.CRITICAL)
    summary = run_spotify_labels(
        cfg, args.playlist, catalogue_index_uri=args.catalogue_index, report_uri=args.report, dry_run=args.dry_run
    )
    print("\n".join(summary.lines()))
    return 0


def cmd_score(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.score import run_score
    from genrecast.spark import spark_session

    with spark_session(cfg) as spark:
        summary = run_score(cfg, spark, mode=args.mode, model=args.model, allow_mass_delete=args.allow_mass_delete)
    print("\n".join(summary.lines()))
    return 0


def cmd_classify(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.classify import classify_result, exit_code, format_jsonl, format_table, track_timelines
    from genrecast.timeline import Timeline, png_names, timeline_png

    if args.timeline_png and os.path.exists(args.timeline_png) and not os.path.isdir(args.timeline_png):
        raise ConfigError(f"--timeline-png {args.timeline_png}: exists and is not a folder")
    items = track_timelines(cfg, args.files, model=args.model)
    results = [classify_result(t, timeline=args.format == "jsonl") for t in items]
    if args.timeline_png:  # one picture per classified file; a failed file gets none
        os.makedirs(args.timeline_png, exist_ok=True)
        for item, name in zip(items, png_names(args.files), strict=True):
            if isinstance(item, Timeline):
                _write_file(os.path.join(args.timeline_png, name), timeline_png(item))
    print(format_jsonl(results) if args.format == "jsonl" else format_table(results))
    for r in results:
        if "error" in r:
            print(f"genrecast classify: {r['path']}: {r['error']}", file=sys.stderr)
    return exit_code(results)


def _write_file(path: str, data: bytes) -> None:
    """Write a local file whole or not at all (temporary file, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cmd_compare(cfg: Config, args: argparse.Namespace) -> int:
    import json

    from genrecast.classify import compare_tracks
    from genrecast.timeline import compare_png, format_compare_table

    if args.png and os.path.isdir(args.png):
        raise ConfigError(f"--png {args.png}: is a folder; name the PNG file to write")
    items, doc = compare_tracks(cfg, args.a, args.b, model=args.model)
    if doc is None:  # nothing is printed or written when either input failed
        for item in items:
            if isinstance(item, dict):
                print(f"genrecast compare: {item['path']}: {item['error']}", file=sys.stderr)
        return 1
    if args.png:
        _write_file(args.png, compare_png(items[0], items[1], doc))  # type: ignore[arg-type]
    if args.format == "json":
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print(format_compare_table(doc))
    return 0


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    import json

    from genrecast.model_report import compare, format_report, load_entry

    doc = compare([load_entry(ref, args.conf) for ref in args.models])
    print(json.dumps(doc, ensure_ascii=False) if args.format == "json" else format_report(doc))
    return 0


def cmd_recommend(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.recommend import run_recommend
    from genrecast.spark import spark_session

    with spark_session(cfg) as spark:
        summary = run_recommend(cfg, spark, model=args.model, k=args.k, method=args.method, mode=args.mode)
    print("\n".join(summary.lines()))
    return 0


def cmd_compact(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.compact import run_compact
    from genrecast.spark import spark_session

    with spark_session(cfg) as spark:
        summary = run_compact(cfg, spark, table=args.table, model=args.model)
    print("\n".join(summary.lines()))
    return 0


def cmd_nightly(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.nightly import run_nightly
    from genrecast.spark import spark_session

    with spark_session(cfg) as spark:
        report = run_nightly(cfg, spark, model=args.model, compact=not args.no_compact)
    print("\n".join(report.lines()))
    return report.exit_code


def cmd_similar(cfg: Config, args: argparse.Namespace) -> int:
    from genrecast.similar import format_similar, similar_for_audio, similar_for_track

    k = args.k or cfg.recommend.k
    if args.track is not None:
        rows = similar_for_track(cfg, args.track, k=k, model=args.model)
    else:
        rows = similar_for_audio(cfg, args.audio, k=k, model=args.model)
    print(format_similar(rows, args.format))
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
        "demo-catalogue",
        parents=[common],
        help="render a genre-labelled demo catalogue (MIDI grooves and scores) into the catalogue",
        description="Render demo tracks offline (mma grooves and music21 scores through fluidsynth) "
        "into catalogue.audio_uri as wav/flac/ogg/mp3, and write catalogue.labels_uri. "
        "Deterministic for a seed; renders are cached in demo.cache_dir. This is rendered MIDI, "
        "not studio recordings: see README.",
    )
    p.add_argument("--tracks-per-genre", type=_positive, metavar="N", help="default: demo.tracks_per_genre")
    p.add_argument("--genres", nargs="+", metavar="GENRE", help="default: the configured genres")
    p.add_argument("--seed", type=int, help="default: demo.seed")
    p.add_argument("--seconds", type=float, help="track length (default: demo.seconds)")
    p.set_defaults(func=cmd_demo_catalogue)

    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="decode the catalogue into the Petastorm mel dataset (incremental)",
        description="List catalogue.audio_uri, join catalogue.labels_uri, and write one row per "
        "clip to <storage.root>/datasets/mels (Petastorm). Incremental: a track whose listing entry "
        "(size + ETag or mtime), label and feature settings match the catalogue manifest "
        "(<storage.root>/manifest) is not read at all; a changed entry is read and hashed, and decoded "
        "only if its bytes changed. Tracks gone from the listing lose their rows. Unusable inputs go to "
        "<storage.root>/rejects/job=ingest. One writer at a time: a second ingest waits up to "
        "storage.lease.wait_seconds, then exits 2.",
    )
    p.add_argument("--full", action="store_true", help="re-ingest every track and replace the dataset")
    p.add_argument(
        "--labels-missing-ok",
        action="store_true",
        help="go on (unlabelled) when catalogue.labels_uri is missing or unreadable although the dataset holds "
        "labelled tracks; without it ingest stops with exit 2 rather than erase their genres",
    )
    p.add_argument("--allow-mass-delete", action="store_true", help=MASS_DELETE_HELP)
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

    p = sub.add_parser(
        "score",
        parents=[common],
        help="genre, probabilities and embedding per catalogue track (nightly or backfill)",
        description="Decode catalogue.audio_uri with ingest's decode + mel code, run the model on executors "
        "(loaded once per worker), write <storage.root>/scores/model=<id>/. nightly: tracks without a score "
        "from this model or whose audio changed (a track whose listing entry matches the catalogue manifest "
        "with the scored audio is not read); backfill: every track, replacing the table. Tracks gone from "
        "the listing lose their rows. Re-runs never "
        "duplicate rows. Rejects go to <storage.root>/rejects/job=score/model=<id>. One writer per table: a "
        "second score run of the same model waits up to storage.lease.wait_seconds, then exits 2.",
    )
    p.add_argument("--mode", choices=["nightly", "backfill"], required=True)
    p.add_argument("--model", default="latest", metavar="ID", help="model id or 'latest' (default)")
    p.add_argument("--allow-mass-delete", action="store_true", help=MASS_DELETE_HELP)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "classify",
        parents=[common],
        help="genre of audio files or s3:// URIs, in one process (no Spark)",
        description="Classify each file with the model: jsonl lines are {path, genre, confidence, "
        "probabilities, clips}. Exit 1 if any file could not be classified (reason on stderr).",
    )
    p.add_argument("files", nargs="+", metavar="FILE_OR_URI")
    p.add_argument("--model", default="latest", metavar="ID", help="model id or 'latest' (default)")
    p.add_argument(
        "--format",
        choices=["table", "jsonl"],
        default="table",
        help="table (default) or jsonl (with a per-clip 'timeline': start_s, end_s, genre, confidence, probabilities)",
    )
    p.add_argument(
        "--timeline-png",
        metavar="DIR",
        help="write <file stem>.png per classified file into DIR: stacked genre probabilities over time",
    )
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "compare",
        parents=[common],
        help="two tracks' genre timelines side by side (files or catalogue track ids; no Spark)",
        description="Classify A and B clip by clip (as classify) and show both genre timelines on one time axis, "
        "each one's genre distribution (share of clips per top genre), the cosine similarity of the two track "
        "embeddings and of their most similar clip pairs, and a one-paragraph summary. A or B is a file or URI, or "
        "else a track id of catalogue.audio_uri. Exit 2 for an input that is neither, 1 if a file cannot be "
        "classified (nothing is written then).",
    )
    p.add_argument("a", metavar="A", help="file, URI or catalogue track id")
    p.add_argument("b", metavar="B", help="file, URI or catalogue track id")
    p.add_argument("--model", default="latest", metavar="ID", help="model id or 'latest' (default)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="table (default) or json")
    p.add_argument("--png", metavar="FILE", help="also draw both timelines on one time axis into FILE (PNG)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="trained models' test results side by side (same test split required; no Spark)",
        description="Put the test evaluations that genrecast train wrote for each model (report/metrics.json: "
        "track and clip accuracy, macro-F1, per-genre F1, the MFCC baseline, training seconds) side by side. "
        "MODEL is an id or 'latest' under --conf's storage root, or CONF:MODEL for a model under another "
        "config's root (e.g. conf/backbone.yaml:latest). Exit 2 when a model is missing or the models were "
        "tested on different tracks (their numbers are not comparable). Scoring speed is not a training result: "
        "see make bench-score.",
    )
    p.add_argument("models", metavar="MODEL", nargs="+", help="[CONF:]model id or 'latest'")
    p.add_argument("--format", choices=["table", "json"], default="table", help="table (default) or json")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "recommend",
        parents=[common],
        help="find the k most similar tracks of every scored track (the neighbours table)",
        description="Read <storage.root>/scores/model=<id>/ and write each track's k nearest tracks by cosine "
        "similarity of the embeddings to <storage.root>/neighbours/model=<id>/ (replacing it): exact search up to "
        "recommend.exact_max_tracks tracks, an approximate index (HNSW, or IVF without hnswlib) above, its "
        "recall@k against exact search printed. A track is never its own neighbour; tracks with identical audio "
        "are reported and never recommended to each other. Beside the table, _report/ holds quality.json "
        "(genre precision@k with and without an artist filter, vs an MFCC baseline), duplicates.csv and "
        "embedding_map.png. --mode nightly updates the stored table for the tracks new, changed or deleted "
        "since the last run (exact search, only the changed buckets rewritten; quality.json and the map are "
        "kept), or recomputes it all when more than recommend.full_recompute_share of the tracks changed.",
    )
    p.add_argument("--model", default="latest", metavar="ID", help="model id or 'latest' (default)")
    p.add_argument("-k", type=_positive, help="neighbours per track (default: recommend.k)")
    p.add_argument(
        "--mode",
        choices=["full", "nightly"],
        default="full",
        help="full: recompute every list (default); nightly: update only what changed since the last run",
    )
    p.add_argument(
        "--method", choices=["auto", "exact", "hnsw", "ivf"], help="search method (default: recommend.method)"
    )
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser(
        "compact",
        parents=[common],
        help="merge a table's small files into files of about compact.target_file_mb (journalled)",
        description="For each chosen table that holds at least compact.min_files files smaller than "
        "compact.target_file_mb: merge them on Spark executors into files of about that size and commit the "
        "merged files and the removal of the small ones in one journalled step (the mel dataset keeps its "
        "row-group size and gets new Petastorm metadata in the same step). Rows are unchanged. Holds each "
        "table's lease in turn: a table another run writes makes it wait up to storage.lease.wait_seconds, "
        "then exit 2.",
    )
    p.add_argument(
        "--table",
        choices=["mels", "scores", "timelines", "neighbours", "rejects", "all"],
        default="all",
        help="which table (default: all; scores, timelines, neighbours and score rejects are the model's)",
    )
    p.add_argument(
        "--model",
        metavar="ID",
        help="model id or 'latest' for the model tables (default: latest; with --table all and no trained "
        "model, they are left out)",
    )
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser(
        "nightly",
        parents=[common],
        help="ingest -> score --mode nightly -> recommend --mode nightly -> compact, with one JSON run report",
        description="Run ingest, score --mode nightly, recommend --mode nightly and compact (where "
        "compact.min_files is reached) in one Spark session and write "
        "<storage.root>/reports/nightly/<run_id>.json: per stage its exit code, seconds, counts and summary. "
        "A failed stage skips the ones after it. Exit code: the worst stage's (0 ok, 1 job failure, "
        "2 bad configuration or a busy table: retry later).",
    )
    p.add_argument("--model", default="latest", metavar="ID", help="model id or 'latest' (default)")
    p.add_argument("--no-compact", action="store_true", help="leave out the compact stage")
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser(
        "similar",
        parents=[common],
        help="tracks most similar to a catalogue track or to a new audio file (no Spark)",
        description="--track: read the track's row from the neighbours table (run genrecast recommend first). "
        "--audio: embed a new file (local path or s3:// URI) with the model and search the scores table's "
        "embeddings exactly. Prints rank, similarity, genre (labels.csv, else predicted) and track_id.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--track", metavar="TRACK_ID", help="a scored catalogue track")
    target.add_argument("--audio", metavar="FILE", help="an audio file or URI, in the catalogue or not")
    p.add_argument("-k", type=_positive, help="how many (default: recommend.k)")
    p.add_argument("--model", default="latest", metavar="ID", help="model id or 'latest' (default)")
    p.add_argument("--format", choices=["table", "jsonl"], default="table", help="table (default) or jsonl")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("labels", help="write labels.csv rows from outside sources (spotify)")
    lsub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    q = lsub.add_parser(
        "spotify",
        parents=[common],
        help="Spotify playlist membership -> labels.csv rows (metadata only)",
        description="Read playlists with spotipy (client credentials from SPOTIPY_CLIENT_ID / "
        "SPOTIPY_CLIENT_SECRET), match items to your catalogue by ISRC, then artist + title, and merge "
        "labels into catalogue.labels_uri. Conflicts are reported, never overwritten. No audio is "
        "fetched from Spotify.",
    )
    q.add_argument(
        "--playlist",
        action="extend",
        nargs="+",
        required=True,
        metavar="PLAYLIST_ID=GENRE",
        help="playlist id, spotify: URI or open.spotify.com URL = a configured genre; repeatable",
    )
    q.add_argument(
        "--catalogue-index",
        metavar="FILE",
        help="CSV track_id,isrc,artist,title "
        "(default: spotify.catalogue_index_uri, else catalogue_index.csv beside labels.csv)",
    )
    q.add_argument("--report", metavar="FILE", help="default: <storage.root>/reports/labels/spotify-<run>.json")
    q.add_argument("--dry-run", action="store_true", help="write the report only; labels.csv unchanged")
    q.set_defaults(func=cmd_labels_spotify)
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
