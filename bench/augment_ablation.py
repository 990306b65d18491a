"""Augmentation ablation: train the genre model once per ``train.augment`` variant on the same
mel dataset and split, and compare validation accuracy (what decides which augmentation stays)
with test track accuracy and macro-F1 (reported, not used to choose).

Needs an ingested dataset (``make demo`` leaves one under the config's storage root). Every
variant is a real ``genrecast train`` (Spark barrier + MultiWorkerMirroredStrategy), published
to the registry like any model; the same seed, split and epochs for all. Variants:
  none             no augmentation (today's training)
  <name>           one augmentation alone (genrecast.augment.AUGMENTATIONS), or "balanced"
  a+b+...          several together
Columns: best validation clip accuracy over the epochs (early stopping keeps the best), the
epoch it came at, test track / clip accuracy and macro-F1 of the published model, seconds.

Usage:
  .venv/bin/python bench/augment_ablation.py [--conf conf/local.yaml] [--epochs 12] [--workers 2]
      [--variants none,gain,tilt,time_mask+freq_mask,pitch,stretch,mixup,balanced]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "none,gain,tilt,time_mask+freq_mask,pitch,stretch,mixup,balanced"


def variant_conf(name: str) -> dict:
    """``train.augment`` settings of one variant name."""
    if name == "none":
        return {"use": [], "balanced": False}
    parts = name.split("+")
    return {"use": [p for p in parts if p != "balanced"], "balanced": "balanced" in parts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conf", default=str(REPO / "conf/local.yaml"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("--out", default=str(REPO / "bench/out/augment_ablation.json"))
    a = ap.parse_args()

    from genrecast.config import AugmentConf, load_config
    from genrecast.spark import get_spark
    from genrecast.train import run_train

    base = load_config(a.conf)
    # A bad variant name is refused here, before any training starts.
    variants = {v: AugmentConf.model_validate(variant_conf(v)) for v in a.variants.split(",")}
    spark = get_spark(base)
    rows = []
    for v, augment in variants.items():
        cfg = base.model_copy(update={"train": base.train.model_copy(update={"augment": augment})})
        t0 = time.monotonic()
        res = run_train(cfg, spark, workers=a.workers, epochs=a.epochs)
        seconds = time.monotonic() - t0
        val = res.workers[0]["history"].get("val_accuracy", [])
        best = max(range(len(val)), key=val.__getitem__) if val else None
        m = res.metrics
        rows.append(
            {
                "variant": v,
                "model_id": res.model_id,
                "val_best": val[best] if best is not None else None,
                "val_epoch": None if best is None else best + 1,
                "epochs_run": m["training"]["epochs_run"],
                "test_track": m["cnn_track"]["accuracy"],
                "test_track_f1": m["cnn_track"]["macro_f1"],
                "test_clip": m["cnn_clip"]["accuracy"],
                "baseline_track": m["baseline_track"]["accuracy"],
                "seconds": seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    spark.stop()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))
    ref = rows[0]
    print(f"\naugmentation ablation: {a.epochs} epochs max, {a.workers} workers, config {a.conf}")
    print("| variant | val acc (best) | epoch | test track acc | test macro-F1 | test clip acc | s | val vs first |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        dv = (r["val_best"] - ref["val_best"]) if r["val_best"] is not None and ref["val_best"] is not None else None
        print(
            f"| {r['variant']} | {r['val_best'] or float('nan'):.3f} | {r['val_epoch']} | {r['test_track']:.3f} | "
            f"{r['test_track_f1']:.3f} | {r['test_clip']:.3f} | {r['seconds']:.0f} | "
            f"{'' if dv is None else f'{dv:+.3f}'} |"
        )
    print(f"MFCC baseline track accuracy on the same test split: {ref['baseline_track']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
