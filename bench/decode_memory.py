"""Decode memory benchmark: peak RSS and time of one file's decode + log-mel, genrecast's guarded
block-wise path vs a whole-file baseline, each in a fresh process.

Baseline (what genrecast did before the guards): ``soundfile.read`` of the whole file
(frames x channels float32), mean over channels, ``librosa.resample`` of the whole track, one
STFT, then the length check. genrecast: ``features.track_clips`` (header duration guard, block
reads + downmix + streamed soxr, STFT in chunks). Both warm up on a 1 s file first (imports,
filterbank), off the clock; the file's bytes are read into memory before (as the jobs do), so
they count in both peaks. Files are generated into bench/out/ (cached; square waves, which FLAC
keeps small): a 30 s stereo 44.1 kHz WAV (the everyday case), a 25-minute 6-channel 96 kHz FLAC
(accepted) and a 3-hour 6-channel 8 kHz FLAC (over ``ingest.max_seconds``: rejected). Usage:
  .venv/bin/python bench/decode_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

OUT = Path(__file__).resolve().parent / "out" / "decode_memory"

FILES = {  # name: (seconds, channels, rate, format)
    "30s-stereo-44k.wav": (30, 2, 44100, "WAV"),
    "25min-6ch-96k.flac": (25 * 60, 6, 96000, "FLAC"),
    "3h-6ch-8k.flac": (3 * 3600, 6, 8000, "FLAC"),
}

CHILD = r"""
import json, sys, time
import numpy as np
def hwm_kib():  # this process's peak RSS (ru_maxrss would carry the parent's across exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
mode, path = sys.argv[1], sys.argv[2]
from genrecast.config import AudioConf, IngestConf
audio, ingest = AudioConf(), IngestConf()
data = open(path, "rb").read()
import io, librosa, soundfile as sf
from genrecast.audio import AudioRejected
from genrecast.features import log_mel_clips, track_clips
warm = io.BytesIO()
sf.write(warm, 0.1 * np.sin(np.arange(4 * 44100) / 10.0)[:, None].repeat(2, axis=1), 44100, format="WAV")
track_clips(warm.getvalue(), "warm.wav", audio, ingest)  # imports, filterbank, resampler: off the clock
librosa.resample(np.zeros(44100, np.float32), orig_sr=44100, target_sr=audio.sample_rate, res_type="soxr_hq")
t = time.perf_counter()
outcome = "accepted"
if mode == "genrecast":
    try:
        track_clips(data, path, audio, ingest)
    except AudioRejected as exc:
        outcome = "rejected: " + str(exc)[:60]
else:
    y, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    y = librosa.resample(y.mean(axis=1), orig_sr=sr, target_sr=audio.sample_rate, res_type="soxr_hq")
    if y.size / audio.sample_rate > ingest.max_seconds:
        outcome = "rejected: too long (after a full decode)"
    else:
        log_mel_clips(y, audio)
print(json.dumps({"s": time.perf_counter() - t, "rss_mib": hwm_kib() / 1024,
                  "outcome": outcome}))
"""


def make(name: str) -> Path:
    """Write one test file block by block (low memory), once."""
    path = OUT / name
    if path.exists():
        return path
    seconds, channels, rate, fmt = FILES[name]
    OUT.mkdir(parents=True, exist_ok=True)
    block = rate * 10
    t0 = 0
    with sf.SoundFile(path, "w", rate, channels, format=fmt, subtype="PCM_16") as f:
        for start in range(0, seconds * rate, block):
            n = min(block, seconds * rate - start)
            period = rate // 200  # a whole number of samples: FLAC's predictor makes it nearly free
            tone = np.where((np.arange(n) + t0) % period < period // 2, 0.3, -0.3)
            f.write(np.repeat(tone[:, None], channels, axis=1))
            t0 += n
    return path


def run(mode: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib")}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"s": float("nan"), "rss_mib": float("nan"), "outcome": f"failed: {proc.stderr.strip()[-80:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"{'file':22} {'MB':>6} {'path':10} {'peak RSS MiB':>12} {'s':>7}  outcome")
    for name in FILES:
        path = make(name)
        base, ours = run("baseline", path), run("genrecast", path)
        for label, r in (("baseline", base), ("genrecast", ours)):
            mb = path.stat().st_size / 1e6
            print(f"{name:22} {mb:6.1f} {label:10} {r['rss_mib']:12.0f} {r['s']:7.2f}  {r['outcome']}")
        print(f"{'':22} {'':6} {'ratio':10} {ours['rss_mib'] / base['rss_mib']:12.2f} {ours['s'] / base['s']:7.2f}")


if __name__ == "__main__":
    main()
