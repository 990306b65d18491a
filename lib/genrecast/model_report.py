"""`genrecast report`: trained models' test results side by side (issue 15, item 7).

Each model's numbers are the ones its train job measured on its own test split (its
``report/metrics.json``: ``cnn_track`` / ``cnn_clip`` / ``baseline_track``); the report only puts
them next to each other, and refuses models whose test tracks differ, whose numbers would not be
comparable. It compares track ids: audio changed behind an id between two trainings goes
unseen (train both on the same catalogue). Models may
live under different storage roots (a backbone model's dataset has its own audio profile): a
reference is ``[CONF:]MODEL``. Pure functions apart from :func:`load_entry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genrecast.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One model as the report sees it: its id, model.json, report/metrics.json and
    ``track_id -> split``."""

    model_id: str
    meta: dict[str, Any]
    metrics: dict[str, Any]
    split: dict[str, str]


def describe(meta: dict[str, Any]) -> str:
    """A model's kind in a few words: ``scratch CNN``, ``musicnn-msd pooled, 3 clips``,
    ``musicnn-msd pooled, 3 clips, harmony x 48``, ``musicnn-msd pooled, 3 clips, harmony x 48,
    logistic C 0.1``, ``musicnn-msd pooled, 3 clips, fine-tuned depth 2`` (only when validation kept
    fine-tuning)."""
    backbone = meta.get("backbone")
    if not backbone or backbone == "scratch":
        return "scratch CNN"
    from genrecast.score import predictor_options  # how scoring reads the same keys

    name = backbone.get("name", "?") if isinstance(backbone, dict) else str(backbone)
    options = predictor_options(meta)
    head, clips = options["head"], options["pool_clips"]
    finetune = meta.get("training", {}).get("finetune") or {}
    tuned = f", fine-tuned depth {finetune['depth']}" if finetune.get("epochs") else ""
    harmony = f", harmony x {options['harmony']}" if options["harmony"] else ""
    training = meta.get("training", {})
    logistic = f", logistic C {training['logistic_c']:g}" if training.get("classifier") == "logistic" else ""
    return f"{name} {head}" + (f", {clips} clips" if head == "pooled" and clips else "") + harmony + logistic + tuned


def compare(entries: list[Entry]) -> dict[str, Any]:
    """Entries -> the report's document: per model its kind, test tracks, track / clip accuracy,
    macro-F1, per-genre F1 and training seconds; the MFCC baseline of the first model (the same
    split gives every model the same baseline, up to the audio profile its MFCCs come from: each
    model's own is kept too). Raises :class:`ConfigError` when the test tracks differ or a
    model.json has no evaluation."""
    if not entries:
        raise ConfigError("report: name at least one model")
    tests = []
    for e in entries:
        if "cnn_track" not in e.metrics or "baseline_track" not in e.metrics:
            raise ConfigError(f"model {e.model_id}: report/metrics.json has no test evaluation")
        test = {t for t, side in e.split.items() if side == "test"}
        if not test:
            raise ConfigError(f"model {e.model_id}: no test split recorded (split.parquet)")
        tests.append(test)
    for e, test in zip(entries[1:], tests[1:], strict=True):
        if test != tests[0]:
            only = len(test ^ tests[0])
            raise ConfigError(
                f"models {entries[0].model_id} and {e.model_id} were tested on different tracks "
                f"({len(tests[0])} vs {len(test)} test tracks, {only} in one only): not comparable"
            )
    genres = list(entries[0].meta["genres"])
    models = []
    for e in entries:
        track, clip, base = e.metrics["cnn_track"], e.metrics.get("cnn_clip", {}), e.metrics["baseline_track"]
        models.append(
            {
                "model_id": e.model_id,
                "kind": describe(e.meta),
                "test_tracks": track["n"],
                "track_accuracy": track["accuracy"],
                "macro_f1": track["macro_f1"],
                "clip_accuracy": clip.get("accuracy"),
                "per_genre_f1": {g: track["per_genre"].get(g, {}).get("f1") for g in genres},
                "baseline_track_accuracy": base["accuracy"],
                # labels.csv sources (genrecast.report.per_source_accuracy): {source: {n, accuracy, ...}}
                "per_source": e.metrics.get("per_source", {}),
                "train_seconds": e.meta.get("training", {}).get("seconds"),
            }
        )
    base = entries[0].metrics["baseline_track"]
    return {
        "genres": genres,
        "test_tracks": len(tests[0]),
        "models": models,
        "baseline": {
            "kind": "MFCC statistics + logistic regression",
            "track_accuracy": base["accuracy"],
            "macro_f1": base.get("macro_f1"),
            "per_genre_f1": {g: base["per_genre"].get(g, {}).get("f1") for g in genres},
        },
    }


def format_report(doc: dict[str, Any]) -> str:
    """The document as a table: a column per model, then the MFCC baseline (the first model's);
    per-source accuracy rows when the labels named sources."""
    models, base = doc["models"], doc["baseline"]
    rows: list[tuple[str, list[str]]] = [
        ("", [m["model_id"] for m in models] + ["MFCC baseline"]),
        ("kind", [m["kind"] for m in models] + [""]),
    ]

    def numbers(name: str, values: list[float | None]) -> None:
        rows.append((name, ["-" if v is None else f"{v:.3f}" for v in values]))

    numbers("track accuracy", [m["track_accuracy"] for m in models] + [base["track_accuracy"]])
    numbers("macro-F1", [m["macro_f1"] for m in models] + [base["macro_f1"]])
    numbers("clip accuracy", [m["clip_accuracy"] for m in models] + [None])
    for g in doc["genres"]:
        numbers(f"F1 {g}", [m["per_genre_f1"][g] for m in models] + [base["per_genre_f1"][g]])
    first = models[0]["per_source"]
    for source in dict.fromkeys(s for m in models for s in m["per_source"]):  # labels.csv sources
        values = [m["per_source"].get(source, {}).get("accuracy") for m in models]
        numbers(f"accuracy {source}", [*values, first.get(source, {}).get("baseline_accuracy")])
    rows.append(("training s", ["-" if m["train_seconds"] is None else f"{m['train_seconds']:.0f}" for m in models]))
    label_w = max(len(name) for name, _cells in rows)
    width = max(len(cell) for _name, cells in rows for cell in cells) + 2
    lines = [f"{doc['test_tracks']} test tracks, the same for every model", ""]
    lines += [f"{name:<{label_w}}" + "".join(c.rjust(width) for c in cells).rstrip() for name, cells in rows]
    mfcc = {round(m["baseline_track_accuracy"], 6) for m in models}
    if len(mfcc) > 1:  # MFCCs from different audio profiles: say so rather than hide it
        lines.append(
            "note: the models' own MFCC baselines differ (audio profiles): "
            + ", ".join(f"{m['model_id']} {m['baseline_track_accuracy']:.3f}" for m in models)
        )
    return "\n".join(lines)


def load_entry(ref: str, default_conf: str) -> Entry:
    """``[CONF:]MODEL`` (MODEL an id or ``latest``, resolved under CONF's storage root; CONF
    defaults to ``default_conf``) -> its :class:`Entry`."""
    import json

    from genrecast import registry
    from genrecast.config import load_config
    from genrecast.storage import Storage, join

    conf, sep, model = ref.rpartition(":")
    cfg = load_config(conf if sep else default_conf)
    model_id = registry.resolve_model_id(cfg, model)
    meta = registry.read_model_json(cfg, model_id)
    uri = join(registry.report_uri(cfg, model_id), "metrics.json")
    storage = Storage.from_config(cfg)
    if not storage.exists(uri):
        raise ConfigError(f"model {model_id}: no {uri}")
    metrics = json.loads(storage.read_bytes(uri))
    return Entry(model_id, meta, metrics, registry.read_split(cfg, model_id, meta))
