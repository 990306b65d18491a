"""Evaluation report: clip and track accuracy, per-genre precision/recall/F1, confusion matrix
(JSON and PNG), training curves, and the MFCC + logistic-regression baseline. Pure NumPy /
scikit-learn / matplotlib; no Spark."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

UNKNOWN_SOURCE = "unknown"  # per_source bucket of tracks whose labels.csv row names no source


def track_mean(track_ids: Sequence[str], clip_values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Average clip rows per track: (sorted track ids, (n_tracks, d))."""
    order = sorted(set(track_ids))
    pos = {t: i for i, t in enumerate(order)}
    sums = np.zeros((len(order), clip_values.shape[1]), np.float64)
    counts = np.zeros(len(order))
    for t, v in zip(track_ids, clip_values, strict=True):
        sums[pos[t]] += v
        counts[pos[t]] += 1
    return order, (sums / counts[:, None]).astype(np.float32)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], genres: list[str]) -> dict[str, Any]:
    """Metrics of predicted class indices against true ones (see :func:`confusion_metrics`)."""
    confusion = np.zeros((len(genres), len(genres)), np.int64)
    np.add.at(confusion, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return confusion_metrics(confusion, genres)


def confusion_metrics(confusion: np.ndarray, genres: list[str]) -> dict[str, Any]:
    """Accuracy, per-genre precision / recall / F1 / support and macro-F1 from a confusion matrix
    (rows true, columns predicted; counts): what evaluation reduced on the executors arrives as.
    A genre with no predictions (or no support) has precision (recall) 0, as scikit-learn's
    ``zero_division=0``."""
    cm = np.asarray(confusion, np.int64)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    p = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    r = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = support + predicted  # 2 tp + fp + fn
    f = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "n": n,
        "per_genre": {
            g: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, g in enumerate(genres)
        },
        "macro_f1": float(np.mean(f)),
        "confusion": cm.tolist(),
    }


def per_source_accuracy(
    true: Mapping[str, int],
    predicted: Mapping[str, int],
    baseline: Mapping[str, int],
    source_of: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """Track accuracy per source: ``{source: {"n", "accuracy", "baseline_accuracy"}}``, sources
    sorted, :data:`UNKNOWN_SOURCE` (tracks missing from ``source_of``, or a source named so)
    last. ``true``, ``predicted`` (the model) and ``baseline`` map the same test track ids to
    class indices."""
    if not (set(true) == set(predicted) == set(baseline)):
        raise ValueError("per_source_accuracy: true, predicted and baseline name different tracks")
    counts: dict[str, list[int]] = {}  # source -> [tracks, model right, baseline right]
    for track_id, y in true.items():
        c = counts.setdefault(source_of.get(track_id) or UNKNOWN_SOURCE, [0, 0, 0])
        c[0] += 1
        c[1] += int(predicted[track_id] == y)
        c[2] += int(baseline[track_id] == y)
    out: dict[str, dict[str, Any]] = {}
    for source in sorted(counts, key=lambda s: (s == UNKNOWN_SOURCE, s)):
        n, right, baseline_right = counts[source]
        out[source] = {"n": n, "accuracy": right / n, "baseline_accuracy": baseline_right / n}
    return out


def baseline_mfcc_logreg(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Predicted class per test row from standardised MFCC statistics + logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    clf.fit(train_x, train_y)
    return clf.predict(test_x)


def plot_confusion(confusion: list[list[int]], genres: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(genres), 0.8 + 0.55 * len(genres)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(genres)), genres, rotation=45, ha="right")
    ax.set_yticks(range(len(genres)), genres)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in (("loss", ax1), ("accuracy", ax2)):
        head_epochs = len(history.get(key, []))
        for prefix in ("", "val_"):
            if prefix + key in history:
                ax.plot(
                    range(1, len(history[prefix + key]) + 1), history[prefix + key], label=(prefix or "train_") + key
                )
            # train.finetune's epochs continue the head's on the same axis
            tuned = history.get(f"finetune_{prefix}{key}")
            if tuned:
                xs = range(head_epochs + 1, head_epochs + len(tuned) + 1)
                ax.plot(xs, tuned, "--", label=f"finetune {(prefix or 'train_') + key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(metrics: dict[str, Any]) -> str:
    """Human-readable summary printed by `genrecast train`."""
    cnn_t, base_t, cnn_c = metrics["cnn_track"], metrics["baseline_track"], metrics["cnn_clip"]
    lines = [
        f"test tracks: {cnn_t['n']}, test clips: {cnn_c['n']}",
        f"model    track accuracy {cnn_t['accuracy']:.3f}  clip accuracy {cnn_c['accuracy']:.3f}  "
        f"macro-F1 {cnn_t['macro_f1']:.3f}",
        f"baseline track accuracy {base_t['accuracy']:.3f}  (MFCC statistics + logistic regression, same split)",
        f"{'genre':<16} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>4}   baseline f1",
    ]
    for g, m in cnn_t["per_genre"].items():
        b = base_t["per_genre"][g]
        lines.append(
            f"{g:<16} {m['precision']:>6.2f} {m['recall']:>6.2f} {m['f1']:>6.2f} {m['support']:>4}   {b['f1']:.2f}"
        )
    if metrics.get("per_source"):
        width = max(16, *(len(s) for s in metrics["per_source"]))
        lines.append(f"{'source':<{width}} {'n':>4} {'accuracy':>8} {'baseline':>8}")
        for s, m in metrics["per_source"].items():
            lines.append(f"{s:<{width}} {m['n']:>4} {m['accuracy']:>8.3f} {m['baseline_accuracy']:>8.3f}")
    return "\n".join(lines)
