"""The result's picture: a waveform per channel above a spectrogram."""

from __future__ import annotations

import numpy as np
from PIL import Image

from musicgen.studio import picture


def test_picture(tmp_path) -> None:
    t = np.arange(32000 * 2) / 32000
    sweep = (0.5 * np.sin(2 * np.pi * (200 + 1000 * t) * t)).astype(np.float32)
    for channels in (1, 2):
        img = picture.render_picture(np.stack([sweep] * channels), 32000)
        assert isinstance(img, Image.Image) and img.width == 960
        pixels = np.asarray(img)
        assert pixels.std() > 10  # something was drawn
    img.save(tmp_path / "pic.png")
    empty = picture.render_picture(np.zeros((1, 0), np.float32), 32000)
    assert empty.height > 0
