"""audiocraft 1.3.0's own melody separation (`ChromaStemConditioner._get_stemmed_wav`) as a test oracle.

conditioners.py imports spacy, num2words, transformers' T5, flashy, librosa (through chroma.py) ... at its top, and
`ChromaStemConditioner.__init__` downloads htdemucs; none of that is part of the separation. So the real source of
the method `_get_stemmed_wav` is compiled unchanged (ast, like audiocraft_oracle's `_real_functions`) into a small
class that holds what it reads: `self.autocast` (audiocraft's real TorchAutocast, utils/autocast.py, built as
`__init__` builds it), `self.demucs` (kept in `self.__dict__` as audiocraft does: here a small random HTDemucs
bag), `self.stem_indices` (vocals, other, as `__init__` computes them), `self.sample_rate` (the model's) and
`self.device`. The method itself
imports demucs' real `apply_model` and `convert_audio`. Nothing here computes a number of its own.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import random
from collections.abc import Iterator
from typing import Any

import torch

from helpers.audiocraft_oracle import SKIP_REASON, SOURCE, available  # noqa: F401 (re-exported)

CONDITIONERS = SOURCE / "audiocraft" / "modules" / "conditioners.py"
AUTOCAST = SOURCE / "audiocraft" / "utils" / "autocast.py"


@functools.cache
def _stemmed_wav_source() -> Any:
    tree = ast.parse(CONDITIONERS.read_text(), str(CONDITIONERS))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ChromaStemConditioner")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "_get_stemmed_wav")
    namespace: dict[str, Any] = {"torch": torch, "tp": __import__("typing")}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(CONDITIONERS), "exec"), namespace)  # noqa: S102
    return namespace["_get_stemmed_wav"]


@functools.cache
def _torch_autocast() -> type:
    spec = importlib.util.spec_from_file_location("_audiocraft_autocast_oracle", AUTOCAST)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TorchAutocast


class StemOracle:
    """The part of audiocraft's ChromaStemConditioner that separates: `_get_stemmed_wav(wav, sample_rate)`."""

    def __init__(self, demucs: Any, sample_rate: int = 32000, device: str = "cpu") -> None:
        self.device, self.sample_rate = device, sample_rate
        self.autocast = _torch_autocast()(enabled=device != "cpu", device_type=device, dtype=torch.float32)
        self.__dict__["demucs"] = demucs
        sources: list = demucs.sources
        self.stem_indices = torch.LongTensor([sources.index("vocals"), sources.index("other")]).to(device)

    def _get_stemmed_wav(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return _stemmed_wav_source()(self, wav, sample_rate)


@contextlib.contextmanager
def shift_from(seed: int) -> Iterator[None]:
    """demucs' `random.randint` draws as if `random.seed(seed)` (what our engine derives its shift from); the global
    `random` state is restored afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)
