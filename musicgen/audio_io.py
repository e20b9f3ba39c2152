"""Audio files in and out, the one place for both the CLI and the studio: results written (WAV 16 / 24-bit,
FLAC, MP3, Ogg Vorbis) and user audio read (melody, audio to continue), both through soundfile (ffmpeg only
for what libsndfile cannot decode).

Uploads are bounded in what they cost (see "uploads" below): the header is checked before decoding, only
the part that is used is decoded, in blocks, each mixed down at once into one preallocated float32 array.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from . import dsp
from .errors import InvalidInputError
from .melody import QUIET_UPLOAD
from .options import WINDOW

MELODY_MAX_SECONDS = 30.0  # the melody models look at the first 30 s at most
MELODY_MIN_SECONDS = 0.5
CONTINUE_MAX_SECONDS = WINDOW  # the prompt must fit in the model's 30 s window
CONTINUE_MIN_SECONDS = 0.1  # a few EnCodec frames (50 per second)


# ---------------------------------------------------------------------------------------------------- WAV, files
# Output formats: name -> (extension, soundfile format, subtype). MP3 (libsndfile >= 1.1) is written at 320 kbps
# constant as audiocraft's audio_write does (MP3_OPTIONS: compression level 0 is libsndfile's highest rate).
FORMATS = {"wav": (".wav", "WAV", "PCM_16"), "wav24": (".wav", "WAV", "PCM_24"), "flac": (".flac", "FLAC", "PCM_16"),
           "mp3": (".mp3", "MP3", "MPEG_LAYER_III"), "ogg": (".ogg", "OGG", "VORBIS")}
MP3_OPTIONS = {"bitrate_mode": "CONSTANT", "compression_level": 0.0}
MP3_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)  # what libsndfile says MPEG has
SUFFIXES = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".ogg": "ogg"}  # output file extension -> format


def _samples(audio: np.ndarray, subtype: str) -> np.ndarray:
    """[C, S] float -> [S, C] as written, clipped to +-1 (NaN as 0): int16 x 32767 (PCM_16), int32 x (2^23 - 1)
    moved to the top 24 bits (PCM_24: soundfile keeps those), float32 for the encoders."""
    x = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32)), -1.0, 1.0).T
    if subtype == "PCM_16":
        return np.round(x * 32767.0).astype(np.int16)
    if subtype == "PCM_24":
        return np.round(x.astype(np.float64) * (2**23 - 1)).astype(np.int32) << 8
    return np.ascontiguousarray(x)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """[C, S] float audio -> a complete 16-bit PCM WAV file in memory (a streamed chunk)."""
    buf = io.BytesIO()
    sf.write(buf, _samples(audio, "PCM_16"), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def format_of_path(path: str | Path) -> str:
    """The format an output file name asks for by its extension (`-o song.flac` -> "flac")."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        what = f"{suffix} files are not written" if suffix else "it has no extension"
        raise InvalidInputError(f"cannot write {Path(path).name}: {what}; name it {', '.join(SUFFIXES)}")
    return SUFFIXES[suffix]


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> Path:
    """[C, S] float audio -> a file in format `fmt` (one of FORMATS) at `path`, its extension made the format's
    (added, or in place of another one of SUFFIXES). Returns the path written."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown output format {fmt!r}: choose one of {', '.join(FORMATS)}")
    (suffix, container, subtype), path = FORMATS[fmt], Path(path)
    if container not in sf.available_formats() or subtype not in sf.available_subtypes(container):
        raise InvalidInputError(f"cannot write {fmt}: this libsndfile {sf.__libsndfile_version__} lacks {subtype} "
                                "(MP3 needs libsndfile >= 1.1 with LAME and mpg123); choose wav, flac or ogg")
    if path.suffix.lower() != suffix:
        path = path.with_suffix(suffix) if path.suffix.lower() in SUFFIXES else Path(f"{path}{suffix}")
    if container == "MP3" and sample_rate not in MP3_RATES:
        raise InvalidInputError(f"MP3 (MPEG-1/2/2.5) has no {sample_rate:,} Hz: write wav, flac or ogg, or resample "
                                f"to one of {', '.join(f'{r:,}' for r in MP3_RATES)} Hz")
    try:
        sf.write(str(path), _samples(audio, subtype), sample_rate, format=container, subtype=subtype,
                 **(MP3_OPTIONS if container == "MP3" else {}))
    except BaseException:  # no half-written file left behind (as audio_write)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise
    return path


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """[C, S] float audio -> a 16-bit PCM WAV file at `path` (".wav" added when it has no such extension)."""
    return write_audio(path, audio, sample_rate, "wav")


# ---------------------------------------------------------------------------------------------------- uploads
# What an upload may cost. Uploads are at most 50 MB (app.py), but a compressed file says little about its
# decoded size (FLAC of a constant: 180 KB for 31 s of 8 channels at 655,350 Hz, 650 MB as float32), so
# the cost is bounded by the format, checked from the header BEFORE anything is decoded:
RATE_MIN = 8_000  # telephone audio: below it there is no tune to follow and no music worth continuing
RATE_MAX = 192_000  # the highest rate studio recorders and DAWs export (4 x 48 kHz)
CHANNELS_MAX = 8  # 7.1 surround, the largest common layout (and the most FLAC stores)
MODEL_RATE = 32_000  # the rate of EnCodec and of the chroma extractor: the engine resamples every upload to it
# Samples (all channels) of an upload handed on as read, at its own rate; a longer one (not at MODEL_RATE) is
# converted to MODEL_RATE here, in segments (_to_model_rate). The engine resamples what it gets in one call,
# and torchaudio's conv1d (2.11, CPU) took up to ~85 B per input sample (16 -> 32 kHz: 72 MB for 31 s of
# stereo; 48 -> 32 kHz: 79 MB), on top of the engine's own copies: this keeps that part under ~45 MB.
NATIVE_SAMPLES_MAX = 1 << 19
PEAK_MAX = 1e4  # float samples beyond +80 dBFS are not a mix that went hot: the file is broken or hostile
BLOCK_FRAMES = 1 << 16  # frames decoded at once: at most 8 ch x 4 B x 65,536 = 2 MB
SEGMENT_FRAMES = 1 << 16  # input frames resampled at once by _to_model_rate: 2 ch x 65,536 x ~85 B = 11 MB
FFMPEG_SECONDS = 60  # ffmpeg's time to decode the part that is used (-t), then it is killed


@dataclass(frozen=True)
class Upload:
    """A checked upload: wave [channels, samples] float32 (melody: 1 channel; audio to continue: 1 or 2) at
    `sample_rate`, and a notice for the user about what was changed (scaled down, mixed to mono) or None.
    Unpacks as the engine's clip: `wave, rate = upload`."""

    wave: np.ndarray
    sample_rate: int
    notice: str | None = None

    @property
    def clip(self) -> tuple[np.ndarray, int]:
        """(wave, sample_rate): what MusicGen.generate takes as melody / continue_from."""
        return self.wave, self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray | int]:
        return iter(self.clip)


def _check_format(rate: int, channels: int, what: str, name: str) -> None:
    """Refuse, from the header alone, files whose decoding or resampling could cost more than the bounds."""
    if not RATE_MIN <= rate <= RATE_MAX:
        raise InvalidInputError(f"the {what} file {name} has a sample rate of {rate:,} Hz; this server reads "
                                f"{RATE_MIN:,} - {RATE_MAX:,} Hz: convert it (44,100 or 48,000 Hz are common)")
    if not dsp.cheap_ratio(rate, MODEL_RATE):
        raise InvalidInputError(f"the {what} file {name} has an unusual sample rate of {rate:,} Hz that does not "
                                f"convert cheaply to the model's {MODEL_RATE:,} Hz: convert it to a common rate "
                                f"({dsp.COMMON_RATES})")
    if not 1 <= channels <= CHANNELS_MAX:
        raise InvalidInputError(f"the {what} file {name} has {channels} channels; this server reads at most "
                                f"{CHANNELS_MAX} (7.1 surround): mix it down to stereo or mono")


def _check_samples(block: np.ndarray, what: str, name: str) -> None:
    """Finite samples within +-PEAK_MAX, checked as each block is decoded (no copy: NaN and inf show in the
    extremes)."""
    if block.size == 0:
        return
    top, bottom = float(block.max()), float(block.min())
    if not (math.isfinite(top) and math.isfinite(bottom)):
        raise InvalidInputError(f"the {what} file {name} contains invalid samples (NaN or infinity)")
    if max(top, -bottom) > PEAK_MAX:
        raise InvalidInputError(f"the {what} file {name} has samples up to {max(top, -bottom):.3g}: audio stays "
                                f"within +-1 (full scale), and louder float files are scaled down only up to "
                                f"+-{PEAK_MAX:g}; this one is broken or not audio")


def _read_blocks(f: sf.SoundFile, frames: int, stereo: bool, what: str, name: str) -> np.ndarray:
    """The first `frames` frames of an open file -> [1 or 2, n] float32, read BLOCK_FRAMES at a time into one
    preallocated array, each block checked and downmixed at once: to mono, except stereo kept as stereo when
    `stereo`. More than two channels go to mono: their layout (which is left, right, centre, surround) differs
    between formats (WAV, FLAC and Vorbis order 5.1 differently) and is often not stored at all."""
    size = min(frames, max(f.frames, 0))  # soundfile reads no further than f.frames either
    out_channels = 2 if stereo and f.channels == 2 else 1
    wave = np.empty((out_channels, size), np.float32)
    buf = np.empty((min(BLOCK_FRAMES, size), f.channels), np.float32)
    n = 0
    while n < size:
        block = f.read(out=buf[: min(len(buf), size - n)])
        if len(block) == 0:
            break
        _check_samples(block, what, name)
        if out_channels == 2:
            wave[:, n : n + len(block)] = block.T
        elif f.channels == 1:
            wave[0, n : n + len(block)] = block[:, 0]
        else:
            np.mean(block, axis=1, out=wave[0, n : n + len(block)])
        n += len(block)
    return wave if n == size else np.ascontiguousarray(wave[:, :n])


def _to_model_rate(wave: np.ndarray, rate: int) -> np.ndarray:
    """[C, N] at `rate` -> [C, M] at MODEL_RATE: dsp.resample of the whole (to float rounding), run on
    segments of SEGMENT_FRAMES with the kernel's reach of context either side, so that no full-size padded
    copy is made. Segments start at multiples of the reduced `orig` (the kernel's stride)."""
    g = math.gcd(rate, MODEL_RATE)
    orig, new = rate // g, MODEL_RATE // g
    margin = orig * math.ceil(dsp.sinc_kernel(rate, MODEL_RATE)[1] / orig)
    step = orig * max(1, SEGMENT_FRAMES // orig)
    length = wave.shape[1]
    out = np.empty((wave.shape[0], math.ceil(new * length / orig)), np.float32)
    for start in range(0, length, step):
        lo, hi = max(0, start - margin), min(length, start + step + margin)
        seg = dsp.resample(torch.from_numpy(np.ascontiguousarray(wave[:, lo:hi])), rate, MODEL_RATE).numpy()
        at, skip = start // orig * new, (start - lo) // orig * new
        count = min(step // orig * new, out.shape[1] - at)
        out[:, at : at + count] = seg[:, skip : skip + count]
    return out


def _decode_with_ffmpeg(path: Path, max_seconds: float, start: float = 0.0) -> tuple[np.ndarray, int]:
    """Formats libsndfile does not read (m4a, webm, ...): ffmpeg -> mono float32 at MODEL_RATE, `max_seconds`
    (-t) from `start` (-ss before -i: ffmpeg seeks in the file, then decodes from there). At most that many
    samples are read from its pipe, whatever ffmpeg writes, and it is killed after FFMPEG_SECONDS."""
    seek = ["-ss", str(start)] if start > 0 else []
    cmd = ["ffmpeg", "-v", "error", "-nostdin", *seek, "-i", str(path), "-t", str(max_seconds), "-vn", "-ac", "1",
           "-ar", str(MODEL_RATE), "-f", "f32le", "pipe:1"]
    wave = np.empty(int(max_seconds * MODEL_RATE), np.float32)
    view, got = memoryview(wave).cast("B"), 0
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          bufsize=0) as proc:
        timer = threading.Timer(FFMPEG_SECONDS, proc.kill)
        timer.start()
        try:
            while got < len(view) and (n := proc.stdout.readinto(view[got:])):  # type: ignore[union-attr]
                got += n
            if got == len(view):
                proc.kill()  # all that is used: whatever it would write beyond -t is not read
            code = proc.wait()  # after end of output it exits, or the timer kills it
        finally:
            proc.kill()  # a no-op once it has exited
            timer.cancel()
    if got < len(view) and code != 0:  # a full read is enough, however it ended (killed just above)
        raise ValueError(f"ffmpeg could not decode {path.name} (exit code {code})")
    return wave[None, : got // 4], MODEL_RATE


def _read_soundfile(path: Path, start: float, end: float | None, seconds: float, stereo: bool,
                    what: str) -> tuple[np.ndarray, int, int]:
    """(wave [1 or 2, n], sample rate, channels in the file): at most `seconds` from `start` up to `end` (None:
    the end of the file; beyond it: clamped), header checked first, then a seek to `start` (frames rounded to
    the nearest), so nothing before it is decoded."""
    with sf.SoundFile(str(path)) as f:
        _check_format(f.samplerate, f.channels, what, path.name)
        first = round(start * f.samplerate)
        if first > 0:
            if first >= f.frames:
                raise InvalidInputError(f"the {what} is to start at {start:g} s, but the file {path.name} is only "
                                        f"{max(f.frames, 0) / f.samplerate:.2f} s long: choose an earlier start")
            f.seek(first)
        stop = f.frames if end is None else min(f.frames, round(end * f.samplerate))
        frames = min(stop - first, int(seconds * f.samplerate))
        return _read_blocks(f, frames, stereo, what, path.name), f.samplerate, f.channels


def _check_trim(start: float, end: float | None, what: str) -> float | None:
    """A trim [start, end) in seconds: start >= 0, end after it (None or inf: to the end of the file). Returns
    `end` (None for inf)."""
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start) or start < 0:
        raise InvalidInputError(f"the {what}'s start must be a number of seconds, 0 or more, got {start!r}")
    if end is None or (isinstance(end, float) and end == math.inf):
        return None
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end):
        raise InvalidInputError(f"the {what}'s end must be a number of seconds (or none: the end of the file), "
                                f"got {end!r}")
    if end <= start:
        raise InvalidInputError(f"the {what}'s end ({end:g} s) must come after its start ({start:g} s)")
    return end


def _read(path: Path, what: str, start: float, end: float | None, seconds: float,
          stereo: bool) -> tuple[np.ndarray, int, int]:
    """_read_soundfile, or ffmpeg (mono) for the formats libsndfile does not read: (wave, rate, channels)."""
    try:
        return _read_soundfile(path, start, end, seconds, stereo, what)
    except InvalidInputError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        if shutil.which("ffmpeg") is None:
            raise _unreadable(what, path.name) from e
        try:
            wave, sr = _decode_with_ffmpeg(path, seconds if end is None else min(seconds, end - start), start)
        except (ValueError, OSError, subprocess.TimeoutExpired) as e2:
            raise _unreadable(what, path.name) from e2
        if wave.size == 0 and start > 0:
            raise InvalidInputError(f"the {what} file {path.name} has no audio from {start:g} s on: it is shorter "
                                    "than that, choose an earlier start") from e
        _check_samples(wave, what, path.name)
        return wave, sr, 1


def _unreadable(what: str, name: str) -> InvalidInputError:
    return InvalidInputError(f"cannot read the {what} file {name}: it is not an audio file this server can decode "
                             "(WAV, FLAC, OGG, MP3" + (", M4A, WEBM, ..." if shutil.which("ffmpeg") else "")
                             + "), or it is damaged")


def _level(wave: np.ndarray, what: str, name: str) -> str | None:
    """Refuse silence; scale a float file that goes above full scale down to a peak of 1.0, in place, and say
    so (the notice returned)."""
    peak = float(max(wave.max(), -wave.min()))  # no |wave| copy
    if peak < QUIET_UPLOAD:
        raise InvalidInputError(f"the {what} file {name} is silent (nothing above -60 dBFS): record or upload "
                                "a clip that can be heard")
    if peak <= 1.0:
        return None
    np.divide(wave, np.float32(peak), out=wave)
    return (f"The {what} peaks at {peak:.3g} ({20 * math.log10(peak):+.1f} dBFS), above full scale: it was "
            "scaled down to a peak of 1.0.")


def load_audio(path: str | Path, what: str, max_seconds: float, min_seconds: float, longer: str = "cut",
               stereo: bool = False, start: float = 0.0, end: float | None = None) -> Upload:
    """An uploaded audio file -> Upload, checked for its format (rate, channels: before decoding), being
    readable, long enough, not silent, and its samples finite and not absurd. Mono, or stereo kept as stereo
    when `stereo` (see _read_blocks). `what` names it in messages ("melody", "audio to continue"). Only
    [start, end) seconds of the file are used (end None or beyond the file: to its end); a part longer than
    `max_seconds` is cut there (longer="cut") or refused (longer="refuse"). Only what is used is decoded;
    beyond NATIVE_SAMPLES_MAX it comes back at MODEL_RATE. Raises InvalidInputError with a message for the
    user."""
    path = Path(path)
    name = path.name
    end = _check_trim(start, end, what)
    if not path.is_file():
        raise InvalidInputError(f"the {what} file {name} was not received; upload it again")
    limit = max_seconds + (1.0 if longer == "refuse" else 0.0)  # read a little more to see that it is longer
    wave, sr, channels = _read(path, what, start, end, limit, stereo)
    if wave.size == 0:
        raise InvalidInputError(f"the {what} file {name} contains no audio")
    seconds = wave.shape[-1] / sr
    used = what if start == 0 and end is None else f"{what} from {start:g} s to {start + seconds:.2f} s"
    if seconds < min_seconds:
        raise InvalidInputError(f"the {used} is only {seconds:.2f} s long; give at least {min_seconds:g} s")
    if seconds >= max_seconds and longer == "refuse":
        more = "" if seconds < limit else " or more"
        raise InvalidInputError(f"the {used} is {seconds:.1f} s{more} long; it must be shorter than {max_seconds:g} s "
                                "(the model's window): trim it in the audio box or upload a shorter clip")
    notices = [_level(wave, what, name)]
    if stereo and channels > 2:
        notices.append(f"The {what} has {channels} channels: they were mixed to mono (which channel is left or "
                       "right is not known reliably beyond stereo).")
    if sr != MODEL_RATE and wave.size > NATIVE_SAMPLES_MAX:  # the same samples the engine would make, for less
        wave, sr = _to_model_rate(wave, sr), MODEL_RATE
    return Upload(wave, sr, " ".join(n for n in notices if n) or None)


def load_melody(path: str | Path, start: float = 0.0, end: float | None = None, *,
                max_seconds: float = MELODY_MAX_SECONDS) -> Upload:
    """A melody file, mixed to mono: [start, end) seconds of it (default: all), of which the first
    `max_seconds` (the melody models look no further)."""
    return load_audio(path, "melody", max_seconds, MELODY_MIN_SECONDS, start=start, end=end)


def load_continuation(path: str | Path, start: float = 0.0, end: float | None = None) -> Upload:
    """The audio a piece continues: [start, end) seconds of the file (default: all; Replicate's
    continuation_start / continuation_end), shorter than the model's 30 s window, refused (not cut) when
    longer, since its end is where the music goes on. Mono or stereo; more channels are mixed to mono."""
    return load_audio(path, "audio to continue", CONTINUE_MAX_SECONDS, CONTINUE_MIN_SECONDS, longer="refuse",
                      stereo=True, start=start, end=end)
