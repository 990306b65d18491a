"""Decoding: audio file bytes -> mono float32 samples at the target sample rate.

soundfile (libsndfile) decodes wav/flac/ogg/opus/mp3 straight from memory; containers it cannot
read (m4a/aac/mp4) go through the ``ffmpeg`` binary. Every failure is an :class:`AudioRejected`
whose message is the reason recorded in the rejects table.

Memory is bounded before and while decoding, not after: the header's duration is checked against
``max_seconds`` before any sample is read, samples are read in blocks and downmixed + resampled
block by block (memory ~ the mono output, whatever the channel count or native rate), and decoding
stops one block past ``max_seconds`` when a header under-declares. ffmpeg gets the same cap
through ``-t``.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

# ffmpeg demuxer per extension, forced with ``-f``: probing the content would let a `.m4a` that
# is an HLS playlist open the hls demuxer, which fetches the files the playlist names.
FFMPEG_DEMUXERS = {"m4a": "mov", "mp4": "mov", "aac": "aac"}
FFMPEG_EXTENSIONS = frozenset(FFMPEG_DEMUXERS)
RESAMPLER = "soxr_hq"  # the quality librosa.resample's default names; same soxr library
# A decoded length this far below what the header declares means the file was cut short.
TRUNCATION_TOLERANCE = 0.01
# Samples (frames x channels) per decoded block: 4 MB of float32 whatever the channel count.
BLOCK_SAMPLES = 1 << 20
SF_COUNT_MAX = 2**63 - 1  # libsndfile's frame count when the length is unknown


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


def _too_long(seconds: float, max_seconds: float, how: str = "") -> AudioRejected:
    """``how``: where the length comes from ("header declares", "decoded at least")."""
    return AudioRejected(f"too long: {how + ' ' if how else ''}{seconds:.0f}s > ingest.max_seconds {max_seconds:g}s")


class _MonoResampler:
    """Mono float32 blocks at ``orig_sr`` -> one array at ``target_sr``, streamed through soxr.

    Bit-identical to ``librosa.resample(y, orig_sr, target_sr, res_type="soxr_hq")`` of the whole
    signal, including its length (``ceil(n * ratio)``, zero-padded), at any block size.
    """

    def __init__(self, orig_sr: int, target_sr: int) -> None:
        import soxr

        self.orig_sr, self.target_sr, self.n_in = orig_sr, target_sr, 0
        self.parts: list[np.ndarray] = []
        self.stream = (
            None
            if orig_sr == target_sr
            else soxr.ResampleStream(orig_sr, target_sr, 1, dtype="float32", quality=RESAMPLER)
        )

    def add(self, block: np.ndarray) -> None:
        """Append a (frames,) float32 block; kept as is at the native rate, so not reused after."""
        self.n_in += block.size
        self.parts.append(block if self.stream is None else self.stream.resample_chunk(block))

    def result(self) -> np.ndarray:
        if self.stream is None:
            if len(self.parts) == 1:  # the common short track: no copy
                return self.parts[0]
            return np.concatenate(self.parts) if self.parts else np.empty(0, np.float32)
        self.parts.append(self.stream.resample_chunk(np.empty(0, np.float32), last=True))
        y = np.concatenate(self.parts)
        self.parts = []
        n_out = int(np.ceil(self.n_in * (float(self.target_sr) / self.orig_sr)))  # librosa's length
        return y[:n_out] if y.size >= n_out else np.pad(y, (0, n_out - y.size))


def _read_frames(f: sf.SoundFile, out: np.ndarray) -> int:
    """Read up to ``len(out)`` frames into ``out`` ((frames, channels) float32, C order) with
    libsndfile's own sequential read; returns the frames read (0 at the end).

    Not ``SoundFile.read``: it seeks to ``tell() + n`` after every call, and a seek makes the MP3
    decoder (mpg123) restart from an earlier frame - block-wise reads of some MP3s came back up to
    0.65 off a one-shot read. libsndfile's C API read in a loop never seeks.
    """
    n = sf._snd.sf_readf_float(f._file, sf._ffi.from_buffer("float[]", out), len(out))
    err = sf._snd.sf_error(f._file)
    if err:
        raise sf.LibsndfileError(err)
    return int(n)


def _decode_soundfile(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 at ``sample_rate``, read block by block (see the module docstring)."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, declared = f.samplerate, f.frames
            known = 0 < declared < SF_COUNT_MAX
            shortfall = _riff_shortfall(data)
            if shortfall:
                raise AudioRejected(
                    f"truncated: WAV data chunk declares {shortfall[0]} bytes, file holds {shortfall[1]}"
                )
            if known and declared / rate > max_seconds:
                raise _too_long(declared / rate, max_seconds, "header declares")
            # One frame past the limit is proof enough when a header under-declares.
            cap = math.floor(max_seconds * rate) + 1 if math.isfinite(max_seconds) else SF_COUNT_MAX
            out = _MonoResampler(rate, sample_rate)
            frames = max(1, BLOCK_SAMPLES // f.channels)
            decoded = 0
            while decoded < cap:
                # A fresh block each time (the mono one is kept as is); sized to what is left.
                left = declared - decoded if known else 0
                block = np.empty((min(frames, left) if left > 0 else frames, f.channels), dtype=np.float32)
                n = _read_frames(f, block)
                if n == 0:
                    break
                decoded += n
                out.add(to_mono(block[:n]))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc).strip().splitlines()[0]
        raise AudioRejected(f"undecodable audio: {detail[:200]}") from None
    if decoded >= cap:
        raise _too_long(decoded / rate, max_seconds, "decoded at least")
    # MP3 headers carry a frame count (Xing/LAME) that a cut file no longer reaches. Ogg has
    # no total length in its header: a cut Ogg file decodes to its complete pages.
    if known and decoded < declared * (1 - TRUNCATION_TOLERANCE):
        raise AudioRejected(f"truncated: header declares {declared / rate:.2f}s, only {decoded / rate:.2f}s decodable")
    return out.result()


def _decode_ffmpeg(data: bytes, ext: str, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 at ``sample_rate`` via ffmpeg (its soxr resampler, like the soundfile path).

    The demuxer is forced from the extension and only local files and pipes may be opened, so the
    input cannot make ffmpeg read anything but itself. Output stops one second past
    ``max_seconds`` (``-t``): a container's duration field can lie, the output length cannot.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioRejected(f"cannot decode .{ext}: ffmpeg is not installed (run make setup)")
    limit = ["-t", f"{max_seconds + 1:.3f}"] if math.isfinite(max_seconds) else []
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
            "-protocol_whitelist",
            "file,pipe",
            "-f",
            FFMPEG_DEMUXERS[ext],
            "-i",
            tmp.name,
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(sample_rate),
            "-af",
            "aresample=resampler=soxr",
            *limit,
            "-f",
            "f32le",
            "pipe:1",
        ]
        proc = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = msg[-1].replace(tmp.name, "<input>") if msg else f"exit {proc.returncode}"
        raise AudioRejected(f"undecodable audio (ffmpeg): {reason[:200]}")
    n = len(proc.stdout) // 4
    if n > max_seconds * sample_rate:
        raise _too_long(n / sample_rate, max_seconds, "decoded at least")
    return np.frombuffer(proc.stdout, dtype="<f4", count=n).copy()


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) float32 by averaging channels (any channel count)."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    # A matrix-vector product: ~10x faster than .mean(axis=1) over a short channel axis.
    weights = np.full(samples.shape[1], 1.0 / samples.shape[1], dtype=np.float32)
    return samples.astype(np.float32, copy=False) @ weights


def decode_audio(data: bytes, ext: str, sample_rate: int, max_seconds: float = math.inf) -> np.ndarray:
    """Decode file bytes to mono float32 samples in [-1, 1] at ``sample_rate`` Hz.

    ``ext`` is the file extension (lower case, no dot); it picks the decoder (and ffmpeg's
    demuxer). A file longer than ``max_seconds`` is rejected before or while decoding, so the
    memory it takes is bounded by ``max_seconds`` of mono output.
    """
    if not data:
        raise AudioRejected("empty file (0 bytes)")
    ext = ext.lower().lstrip(".")
    if ext in FFMPEG_EXTENSIONS:
        y = _decode_ffmpeg(data, ext, sample_rate, max_seconds)
    else:
        y = _decode_soundfile(data, sample_rate, max_seconds)
    if y.size == 0:
        raise AudioRejected("no audio frames")
    if not np.isfinite(y).all():
        raise AudioRejected("samples contain NaN or infinity")
    return y


def ac_rms(y: np.ndarray) -> float:
    """RMS of ``y`` around its mean (a DC offset counts as silence), float64, in blocks."""
    mean = float(np.mean(y, dtype=np.float64))
    total = 0.0
    for start in range(0, y.size, BLOCK_SAMPLES):
        d = y[start : start + BLOCK_SAMPLES].astype(np.float64) - mean
        total += float(d @ d)
    return math.sqrt(total / y.size) if y.size else 0.0


def _dbfs(x: float) -> float:
    return 20 * math.log10(x) if x > 0 else -math.inf


def check_usable(
    y: np.ndarray,
    sample_rate: int,
    min_seconds: float,
    max_seconds: float,
    silence_peak_dbfs: float,
    silence_rms_dbfs: float = -70.0,
) -> None:
    """Raise :class:`AudioRejected` for audio too short, too long or silent to classify.

    Silent: peak below ``silence_peak_dbfs``, or RMS around the mean (dB re full scale 1.0; a
    full-scale sine is -3 dB) below ``silence_rms_dbfs`` - a constant or DC signal has a high
    peak but nothing to hear. Short tracks are rejected rather than padded: a mostly-silent
    padded clip would teach the model that silence is a genre cue.
    """
    seconds = y.size / sample_rate
    if seconds < min_seconds:
        raise AudioRejected(f"too short: {seconds:.2f}s, shorter than one {min_seconds:g}s clip")
    if seconds > max_seconds:
        raise _too_long(seconds, max_seconds)
    peak_dbfs = _dbfs(max(float(y.max()), -float(y.min())))  # no |y| copy of a long track
    if peak_dbfs < silence_peak_dbfs:
        raise AudioRejected(f"silent: peak {peak_dbfs:.1f} dBFS below {silence_peak_dbfs:g} dBFS")
    rms_dbfs = _dbfs(ac_rms(y))
    if rms_dbfs < silence_rms_dbfs:
        raise AudioRejected(
            f"silent: RMS around the mean {rms_dbfs:.1f} dBFS below ingest.silence_rms_dbfs "
            f"{silence_rms_dbfs:g} dBFS (a constant or DC signal)"
        )


def extension_of(uri: str) -> str:
    """Lower-case extension without the dot (``''`` when there is none)."""
    return os.path.splitext(uri.rsplit("/", 1)[-1])[1].lower().lstrip(".")
