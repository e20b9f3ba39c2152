"""audiocraft 1.3.0's own multi-band diffusion code, imported from its unpacked sdist as a test oracle.

scripts/setup.sh (requirements-dev.txt) unpacks the sdist listed in tests/oracles.txt into
`.venv/oracles/audiocraft-1.3.0`; it is never pip-installed. Its package `__init__` files pull in xformers,
av, spacy, transformers, demucs, flashy ... so they are not executed: `audiocraft`, `audiocraft.models`,
`audiocraft.modules` and `audiocraft.solvers` are registered as empty packages whose `__path__` points at the
real source folders, and the real modules are imported from there by their real names:

- real, unchanged: models/unet.py (DiffusionUnet), modules/transformer.py, streaming.py, rope.py,
  modules/diffusion_schedule.py (NoiseSchedule, SampleProcessor, MultiBandProcessor),
  models/multibanddiffusion.py (MultiBandDiffusion, DiffusionProcess), models/loaders.py
  (load_diffusion_models: how audiocraft reads mbd_musicgen_32khz.th); and, on its own through
  `audio_utils()`, data/audio_utils.py (normalize_audio: what audio_write does to levels; needs torchaudio).
- real functions in a stub module: `audiocraft.models.builders` holds only `get_diffusion_model` and
  `get_processor`, compiled from the real builders.py source (the rest of that file needs the LM stack).
- stubs for unrelated imports only: `xformers.ops` (used by transformer.py for memory-efficient attention,
  which the diffusion UNet never enables; removed from sys.modules again after the import),
  `audiocraft.models.encodec.CompressionModel` and `audiocraft.solvers.compression.CompressionSolver`
  (type names multibanddiffusion.py / loaders.py import; the codec is handed in, see `CodecAdapter`).
Only torch, julius, einops, omegaconf and huggingface_hub are needed. Nothing here computes a reference
number itself: the stubs are never called.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
VERSION = "1.3.0"
SOURCE = ROOT / ".venv" / "oracles" / f"audiocraft-{VERSION}"
SKIP_REASON = (f"audiocraft {VERSION}'s source (the MBD test oracle) is not in {SOURCE}: run "
               "scripts/setup.sh requirements-dev.txt, which unpacks the sdist listed in tests/oracles.txt")


def available() -> bool:
    return (SOURCE / "audiocraft" / "models" / "unet.py").is_file()


def _module(name: str, path: Path | None = None, **attrs: Any) -> types.ModuleType:
    """An empty (package) module registered under `name`; `path` makes real submodules importable from it."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=path is not None)
    if path is not None:
        mod.__path__ = [str(path)]
        mod.__spec__.submodule_search_locations = [str(path)]
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, mod)
    return mod


class _Unused:
    """Stands for a class the oracle never uses (only imported by name)."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise RuntimeError("stubbed out: not part of the MBD oracle")


def _real_functions(path: Path, names: Sequence[str], namespace: dict[str, Any]) -> None:
    """Compile the named top-level functions of a real source file into `namespace`, unchanged."""
    tree = ast.parse(path.read_text(), str(path))
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert sorted(n.name for n in body) == sorted(names), f"{path} lacks one of {names}"
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102


def _package() -> Path:
    """Register the empty `audiocraft` package over the real source folder (once); returns that folder."""
    if not available():
        raise RuntimeError(SKIP_REASON)
    pkg = SOURCE / "audiocraft"
    if "audiocraft" not in sys.modules:
        _module("audiocraft", pkg, __version__=VERSION, _musicgen_oracle=True)
    elif not hasattr(sys.modules["audiocraft"], "_musicgen_oracle"):
        raise RuntimeError("another audiocraft is already imported in this process")
    return pkg


@functools.cache
def audio_utils() -> types.ModuleType:
    """audiocraft/data/audio_utils.py, real and unchanged (normalize_audio, normalize_loudness: what
    audio_write applies before writing); it needs only torch, torchaudio and julius. `audiocraft.data` is
    registered empty: its `__init__` imports the datasets (av, ...)."""
    pkg = _package()
    if "audiocraft.data" not in sys.modules:
        _module("audiocraft.data", pkg / "data")
    return importlib.import_module("audiocraft.data.audio_utils")


@functools.cache
def oracle() -> types.SimpleNamespace:
    """Import the real modules once per session; returns them as `.unet`, `.schedule`, `.mbd`, `.loaders`,
    `.builders` and `.transformer`."""
    pkg = _package()
    for sub in ("models", "modules", "solvers"):
        _module(f"audiocraft.{sub}", pkg / sub)
    xformers = _module("xformers", Path("/nonexistent"))  # transformer.py: `from xformers import ops`
    _module("xformers.ops")
    try:
        transformer = importlib.import_module("audiocraft.modules.transformer")
    finally:  # nothing else may see a fake xformers (transformers probes for it)
        for name in ("xformers.ops", "xformers"):
            sys.modules.pop(name, None)
        del xformers
    unet = importlib.import_module("audiocraft.models.unet")
    schedule = importlib.import_module("audiocraft.modules.diffusion_schedule")
    _module("audiocraft.models.encodec", CompressionModel=_Unused)
    _module("audiocraft.solvers.compression", CompressionSolver=_Unused)
    builders = _module("audiocraft.models.builders", DiffusionUnet=unet.DiffusionUnet,
                       SampleProcessor=schedule.SampleProcessor, MultiBandProcessor=schedule.MultiBandProcessor,
                       omegaconf=importlib.import_module("omegaconf"))
    _real_functions(pkg / "models" / "builders.py", ["get_diffusion_model", "get_processor"], builders.__dict__)
    loaders = importlib.import_module("audiocraft.models.loaders")
    mbd = importlib.import_module("audiocraft.models.multibanddiffusion")
    return types.SimpleNamespace(unet=unet, schedule=schedule, mbd=mbd, loaders=loaders, builders=builders,
                                 transformer=transformer)


@contextlib.contextmanager
def trusted_torch_load() -> Iterator[None]:
    """audiocraft 1.3.0 calls `torch.load(file)`, which torch >= 2.6 restricts to weights (the file holds
    omegaconf configs). The files the oracle reads are our own test fixtures, so full unpickling is fine."""
    original = torch.load
    torch.load = functools.partial(original, weights_only=False)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]


def load_diffusion_models(path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """audiocraft's own loader (strict load_state_dict of every band's model and processor), then `.eval()`.

    The one behaviour of audiocraft the oracle changes: `load_diffusion_models` / `get_mbd_musicgen` never call
    `.eval()`, so audiocraft samples with its band models in training mode, where the bottleneck transformer's
    dropout (0.1, hard-coded in DiffusionUnet's StreamingTransformer) is active: random, not reproducible.
    Our engine decodes in eval mode (dropout off); so does the oracle."""
    with trusted_torch_load():
        models, processors, cfgs = oracle().loaders.load_diffusion_models(str(path), device="cpu")
    return [m.eval() for m in models], processors, cfgs


class CodecAdapter(torch.nn.Module):
    """The part of audiocraft's CompressionModel that MultiBandDiffusion uses, over OUR EnCodec (musicgen/codec.py,
    tested against transformers on its own): `decode` is the reference audio, `decode_latent` the condition
    (sum of codebook vectors, what audiocraft's quantizer.decode returns)."""

    def __init__(self, codec: Any):
        super().__init__()
        self.codec = codec

    @property
    def sample_rate(self) -> int:
        return self.codec.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.cfg.sample_rate / self.codec.cfg.hop_length

    @property
    def channels(self) -> int:
        return 1

    def decode(self, codes: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        assert scale is None
        return self.codec.decode(codes)

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codec.latent(codes)


def multiband_diffusion(path: Path, codec: Any) -> Any:
    """audiocraft's `MultiBandDiffusion.get_mbd_musicgen`, run as is, with its two loads redirected: the band
    models come from `path` through audiocraft's `load_diffusion_models`, the codec is `CodecAdapter(codec)`."""
    mbd = oracle().mbd
    saved = mbd.load_compression_model, mbd.load_diffusion_models
    mbd.load_compression_model = lambda name, device=None: CodecAdapter(codec)
    mbd.load_diffusion_models = lambda repo, filename=None, device=None: load_diffusion_models(path)
    try:
        return mbd.MultiBandDiffusion.get_mbd_musicgen(device="cpu")
    finally:
        mbd.load_compression_model, mbd.load_diffusion_models = saved


@contextlib.contextmanager
def noise_from(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Every `torch.randn_like(x)` audiocraft's sampling makes (initial noise per band, then one per stochastic
    step) draws item i of the batch from generators[i], exactly as musicgen.diffusion draws its noise."""
    original = torch.randn_like

    def randn_like(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        shape = (1, *x.shape[1:])
        return torch.cat([torch.randn(shape, generator=g) for g in generators]).to(x)

    torch.randn_like = randn_like  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.randn_like = original  # type: ignore[assignment]
