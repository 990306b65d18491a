"""Decoding: audio file bytes -> mono float32 samples at the target sample rate.

soundfile (libsndfile) decodes wav/flac/ogg/opus/mp3 straight from memory; containers it cannot
read (m4a/aac/mp4) go through the ``ffmpeg`` binary. Every failure is an :class:`AudioRejected`
whose message is the reason recorded in the rejects table.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

FFMPEG_EXTENSIONS = frozenset({"m4a", "aac", "mp4"})
RESAMPLER = "soxr_hq"
# A decoded length this far below what the header declares means the file was cut short.
TRUNCATION_TOLERANCE = 0.01


class AudioRejected(ValueError):
    """The input cannot be used; ``str(exc)`` is the reason for the rejects table."""


def _riff_shortfall(data: bytes) -> tuple[int, int] | None:
    """(declared, present) bytes of a WAV ``data`` chunk when the file holds less than declared.

    libsndfile quietly clamps a cut WAV to the bytes present, so the header is checked here.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            present = len(data) - pos - 8
            # 0 and 0xFFFFFFFF mean "unknown" (streamed writers); trust the bytes then.
            if 0 < size < 0xFFFFFFFF and present < size * (1 - TRUNCATION_TOLERANCE):
                return size, present
            return None
        pos += 8 + size + (size & 1)
    return None


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the native sample rate."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared = f.frames
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc).strip().splitlines()[0]
        raise AudioRejected(f"undecodable audio: {detail[:200]}") from None
    shortfall = _riff_shortfall(data)
    if shortfall:
        raise AudioRejected(f"truncated: WAV data chunk declares {shortfall[0]} bytes, file holds {shortfall[1]}")
    # MP3 headers carry a frame count (Xing/LAME) that a cut file no longer reaches. Ogg has
    # no total length in its header: a cut Ogg file decodes to its complete pages.
    if declared > 0 and len(samples) < declared * (1 - TRUNCATION_TOLERANCE):
        raise AudioRejected(
            f"truncated: header declares {declared / rate:.2f}s, only {len(samples) / rate:.2f}s decodable"
        )
    return samples, rate


def _decode_ffmpeg(data: bytes, ext: str, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate`` via ffmpeg (its soxr resampler, like the soundfile path)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioRejected(f"cannot decode .{ext}: ffmpeg is not installed (run make setup)")
    # MP4-family files keep their index at the end, so ffmpeg needs a seekable file, not a pipe.
    with tempfile.NamedTemporaryFile(suffix=f".{ext}") as tmp:
        tmp.write(data)
        tmp.flush()
        cmd = [
            ffmpeg,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            tmp.name,
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(sample_rate),
            "-af",
            "aresample=resampler=soxr",
            "-f",
            "f32le",
            "pipe:1",
        ]
        proc = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = msg[-1].replace(tmp.name, "<input>") if msg else f"exit {proc.returncode}"
        raise AudioRejected(f"undecodable audio (ffmpeg): {reason[:200]}")
    return np.frombuffer(proc.stdout, dtype="<f4").copy()


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) float32 by averaging channels (any channel count)."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    # A matrix-vector product: ~10x faster than .mean(axis=1) over a short channel axis.
    weights = np.full(samples.shape[1], 1.0 / samples.shape[1], dtype=np.float32)
    return samples.astype(np.float32, copy=False) @ weights


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return y
    import librosa

    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr, res_type=RESAMPLER).astype(np.float32)


def decode_audio(data: bytes, ext: str, sample_rate: int) -> np.ndarray:
    """Decode file bytes to mono float32 samples in [-1, 1] at ``sample_rate`` Hz.

    ``ext`` is the file extension (lower case, no dot); it only picks the decoder.
    """
    if not data:
        raise AudioRejected("empty file (0 bytes)")
    ext = ext.lower().lstrip(".")
    if ext in FFMPEG_EXTENSIONS:
        y = _decode_ffmpeg(data, ext, sample_rate)
    else:
        samples, rate = _decode_soundfile(data)
        y = resample(to_mono(samples), rate, sample_rate)
    if y.size == 0:
        raise AudioRejected("no audio frames")
    if not np.isfinite(y).all():
        raise AudioRejected("samples contain NaN or infinity")
    return y


def check_usable(
    y: np.ndarray, sample_rate: int, min_seconds: float, max_seconds: float, silence_peak_dbfs: float
) -> None:
    """Raise :class:`AudioRejected` for audio too short, too long or silent to classify.

    Short tracks are rejected rather than padded: a mostly-silent padded clip would teach the
    model that silence is a genre cue.
    """
    seconds = y.size / sample_rate
    if seconds < min_seconds:
        raise AudioRejected(f"too short: {seconds:.2f}s, shorter than one {min_seconds:g}s clip")
    if seconds > max_seconds:
        raise AudioRejected(f"too long: {seconds:.0f}s > ingest.max_seconds {max_seconds:g}s")
    peak = float(np.max(np.abs(y)))
    peak_dbfs = 20 * np.log10(peak) if peak > 0 else -np.inf
    if peak_dbfs < silence_peak_dbfs:
        raise AudioRejected(f"silent: peak {peak_dbfs:.1f} dBFS below {silence_peak_dbfs:g} dBFS")


def extension_of(uri: str) -> str:
    """Lower-case extension without the dot (``''`` when there is none)."""
    return os.path.splitext(uri.rsplit("/", 1)[-1])[1].lower().lstrip(".")
