"""The result's picture for the web app: a waveform per channel above a spectrogram, drawn with numpy and
Pillow (no plotting library): a min/max envelope per pixel column for each channel, and a log-magnitude STFT
on a mel-spaced frequency axis with a magma-like colour map.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (17, 24, 39)
GRID = (55, 65, 81)
TEXT = (209, 213, 219)
WAVE_COLORS = ((251, 146, 60), (96, 165, 250))  # left / mono, right
_MAGMA = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122), (229, 80, 100),
                   (251, 135, 97), (254, 194, 135), (252, 253, 191)], dtype=np.float32)


def _colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 through a magma-like ramp."""
    pos = np.clip(x, 0.0, 1.0) * (len(_MAGMA) - 1)
    i = np.minimum(pos.astype(np.int64), len(_MAGMA) - 2)
    t = (pos - i)[..., None]
    return (_MAGMA[i] * (1 - t) + _MAGMA[i + 1] * t).astype(np.uint8)


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def spectrogram(mono: np.ndarray, sample_rate: int, columns: int, rows: int, n_fft: int = 2048,
                floor_db: float = -80.0) -> np.ndarray:
    """Mono audio -> [rows, columns] in [0, 1]: log magnitude (dB above `floor_db` relative to the peak),
    mel-spaced from 30 Hz (bottom row last) to Nyquist."""
    hop = max(1, len(mono) // columns)
    padded = np.pad(mono.astype(np.float32), (n_fft // 2, n_fft // 2 + hop * columns))
    starts = np.arange(columns) * hop
    frames = padded[starts[:, None] + np.arange(n_fft)[None, :]] * np.hanning(n_fft).astype(np.float32)
    mag = np.abs(np.fft.rfft(frames, axis=-1))  # [columns, n_fft // 2 + 1]
    db = 20 * np.log10(mag + 1e-10)
    db = (db - db.max() - floor_db) / -floor_db
    mels = np.linspace(_mel(30.0), _mel(sample_rate / 2), rows)
    freqs = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = freqs / (sample_rate / n_fft)
    lo = np.clip(np.floor(bins).astype(np.int64), 0, mag.shape[1] - 1)
    hi = np.clip(lo + 1, 0, mag.shape[1] - 1)
    t = bins - lo
    img = db[:, lo] * (1 - t) + db[:, hi] * t  # [columns, rows]
    return np.clip(img.T[::-1], 0.0, 1.0)


def _time_step(seconds: float) -> float:
    return next(s for s in (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60) if seconds / s <= 12)


def render_picture(audio: np.ndarray, sample_rate: int, width: int = 960, wave_height: int = 70,
                   spec_height: int = 170) -> Image.Image:
    """[C, S] audio -> an RGB picture: one waveform per channel above a spectrogram of their mean."""
    audio = np.asarray(audio, dtype=np.float32)
    channels, n = audio.shape
    left, top, gap, axis = 44, 10, 8, 22
    plot_w = width - left - 10
    height = top + channels * (wave_height + gap) + spec_height + axis
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=12)

    edges = np.linspace(0, n, plot_w + 1).astype(np.int64)
    for c in range(channels):
        y0 = top + c * (wave_height + gap)
        mid, half = y0 + wave_height / 2, wave_height / 2 - 1
        draw.line([(left, mid), (left + plot_w, mid)], fill=GRID)
        color = WAVE_COLORS[c % len(WAVE_COLORS)]
        if n:
            starts = edges[:-1].clip(max=n - 1)
            lows, highs = np.minimum.reduceat(audio[c], starts), np.maximum.reduceat(audio[c], starts)
            for x, (a, b) in enumerate(zip(lows, highs)):
                draw.line([(left + x, mid - b * half), (left + x, mid - a * half)], fill=color)
        label = ("L", "R")[c] if channels == 2 else "wave"
        draw.text((4, y0 + wave_height / 2 - 7), label, fill=TEXT, font=font)

    y_spec = top + channels * (wave_height + gap)
    if n:
        spec = spectrogram(audio.mean(axis=0), sample_rate, plot_w, spec_height)
        img.paste(Image.fromarray(_colormap(spec), "RGB"), (left, y_spec))
    for hz, text in ((100, "100"), (1000, "1k"), (10000, "10k")):
        if hz < sample_rate / 2:
            frac = (_mel(hz) - _mel(30.0)) / (_mel(sample_rate / 2) - _mel(30.0))
            y = y_spec + spec_height - 1 - frac * (spec_height - 1)
            draw.text((4, y - 7), text, fill=TEXT, font=font)
            draw.line([(left - 4, y), (left, y)], fill=TEXT)

    seconds = n / sample_rate
    y_axis = y_spec + spec_height
    if seconds > 0:
        step = _time_step(seconds)
        for k in range(int(seconds / step) + 1):
            x = left + (k * step / seconds) * (plot_w - 1)
            draw.line([(x, y_axis), (x, y_axis + 4)], fill=TEXT)
            draw.text((min(x - 8, width - 30), y_axis + 6), f"{k * step:g}s", fill=TEXT, font=font)
    return img
