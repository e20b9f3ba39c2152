"""Multi-band diffusion: closed forms, band splitting and re-EQ, the UNet, decoding, and safe weight loading.

The oracle is audiocraft 1.3.0 itself (tests/helpers/audiocraft_oracle.py): the MBD checkpoints are built by
its DiffusionUnet / MultiBandProcessor and saved in the official pickle layout (tests/helpers/mbd_checkpoints.py:
random weights, hand-made configs and statistics), read by audiocraft's own loader, and every band network,
processor and whole tokens -> audio decode is compared with it, with the same noise. Our side reads the files
through the allow-listed unpickler and the converter, as a real download; one scenario goes through
`hf_hub_download` against the fake Hub in a subprocess. The schedule and re-EQ are also checked against closed
forms; the malicious pickles are hand-made attacks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import julius
import numpy as np
import pytest
import torch
from helpers import audiocraft_oracle as oracle
from helpers.fakehub import FakeHub, hub_env, run_json
from helpers.mbd_checkpoints import (
    OPTION_SETS,
    build_malicious_checkpoint,
    build_mbd_checkpoint,
    build_package,
)

from musicgen import CheckpointError, DownloadError, InvalidInputError
from musicgen import mbd_checkpoint as ckpt_io
from musicgen.codec import EnCodec
from musicgen.config import CodecConfig
from musicgen.diffusion import MultiBandDiffusion, SplitBands, item_generators, re_eq
from musicgen.diffusion_schedule import NoiseSchedule, ScheduleConfig
from musicgen.unet import DiffusionUnet, MultiheadAttention, UNetConfig

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000
FRAMES = 3
COMBOS = ("transformer", "mixed")
BANDS = [(combo, i) for combo in COMBOS for i in range(4)]
UNET_TOL, PROCESSOR_TOL, DECODE_TOL = 1e-5, 1e-5, 1e-4  # max abs, float32


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.py


@pytest.fixture(scope="module")
def codec() -> EnCodec:
    cfg = CodecConfig(sample_rate=SR, channels=1, dim=128, num_filters=4, num_residual_layers=1, ratios=(8, 5, 4, 4),
                      kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2, causal=False,
                      pad_mode="reflect", compress=2, num_lstm_layers=1, trim_right_ratio=1.0, codebook_size=64,
                      num_quantizers=4, conv_shortcut=False)
    torch.manual_seed(0)
    model = EnCodec(cfg).eval().requires_grad_(False)
    torch.nn.init.normal_(model.codebooks)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built by audiocraft, saved as the official .th (skips when the oracle is absent)."""
    root = tmp_path_factory.mktemp("mbd")
    return {name: build_mbd_checkpoint(root / f"{name}.th", name, seed=i) for i, name in enumerate(COMBOS)}


@pytest.fixture(scope="module")
def mbd(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, MultiBandDiffusion]:
    """Ours, through the path a download takes: the safe unpickler, `convert`, then the converted folder."""
    root = tmp_path_factory.mktemp("converted")
    return {name: MultiBandDiffusion.from_file(ckpt_io.convert(path, root / name), "cpu")
            for name, path in files.items()}


@pytest.fixture(scope="module")
def reference(files: dict[str, Path]) -> dict[str, tuple[list[Any], list[Any], list[Any]]]:
    """audiocraft's (models, processors, cfgs), read from the same files by its own loader."""
    return {name: oracle.load_diffusion_models(path) for name, path in files.items()}


def codes(seed: int, batch: int = 2, frames: int = FRAMES) -> torch.Tensor:
    return torch.randint(0, 64, (batch, 4, frames), generator=torch.Generator().manual_seed(seed))


def gens(seed: int, n: int) -> list[torch.Generator]:
    return item_generators(torch.Generator().manual_seed(seed), n)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


# --- schedule, band splitting, re-EQ: against closed forms -------------------------------------------------

def test_schedule_closed_form() -> None:
    b0, b1, p, n = 1e-5, 2.9e-2, 7.5, 1000
    sched = NoiseSchedule(ScheduleConfig.from_cfg({"beta_t0": b0, "beta_t1": b1, "beta_exp": p, "num_steps": n}, "t"))
    betas = np.linspace(b0 ** (1 / p), b1 ** (1 / p), n) ** p
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(sched.alpha_bars.numpy(), abar, rtol=1e-12)
    chain = sched.step_list()
    assert chain == [999 - 50 * k for k in range(20)] + [0]
    coeffs = sched.coefficients()
    assert len(coeffs) == 20 and [c[0] for c in coeffs] == chain[:-1]
    x0, eps = 0.3, -1.1
    for (t, c_eps, inv_sqrt_alpha, sigma), s in zip(coeffs, chain[1:]):
        alpha = abar[t] / abar[s]
        posterior_var = (1 - abar[s]) / (1 - abar[t]) * (1 - alpha)  # DDPM beta-tilde of the sub-sampled chain
        assert sigma == pytest.approx(0.0 if t == chain[-2] else math.sqrt(posterior_var), rel=1e-9)
        # the update with the true noise is the posterior mean of q(x_s | x_t, x_0)
        xt = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
        mean = math.sqrt(abar[s]) * (1 - alpha) / (1 - abar[t]) * x0 + math.sqrt(alpha) * (1 - abar[s]) / (
            1 - abar[t]) * xt
        assert (xt - c_eps * eps) * inv_sqrt_alpha == pytest.approx(mean, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n_bands", [8, 32])
def test_split_bands_sum_to_input(n_bands: int) -> None:
    x = torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(0))
    bands = SplitBands(SR, n_bands)(x)
    assert bands.shape == (n_bands, 2, 1, 8000)
    torch.testing.assert_close(bands.sum(0), x, atol=1e-5, rtol=0)
    assert (bands.std(dim=(1, 2, 3)) > 1e-3).all()  # every band carries part of white noise


def test_re_eq_gives_each_band_the_reference_std() -> None:
    """Tones at the centre of each of the 32 mel bands: after re-EQ every band has the reference's energy."""
    mels = torch.linspace(0, float(julius.core.hz_to_mel(torch.tensor(SR / 2))), 65)[1::2]  # 32 band centres
    centres = [float(julius.core.mel_to_hz(m)) for m in mels]
    g = torch.Generator().manual_seed(3)
    t = torch.arange(2 * SR) / SR
    tones = torch.stack([torch.sin(2 * math.pi * f * t + 6.3 * torch.rand(1, generator=g)) for f in centres])
    amp_out, amp_ref = torch.rand(2, 32, generator=g) + 0.1, torch.rand(2, 32, generator=g) + 0.1
    out, ref = (amp_out @ tones)[:, None], (amp_ref @ tones)[:, None]
    split = SplitBands(SR, 32)
    eq = re_eq(out, ref, split)
    mid = slice(SR // 2, 3 * SR // 2)  # away from the filters' edge effects
    got, want = split(eq)[..., mid].std(dim=(2, 3)), split(ref)[..., mid].std(dim=(2, 3))
    torch.testing.assert_close(got, want, rtol=0.03, atol=0)
    assert (split(out)[..., mid].std(dim=(2, 3)) / want - 1).abs().max() > 0.5  # it did change something
    # per item: one item's gains do not depend on the other item of the batch
    torch.testing.assert_close(re_eq(out[:1], ref[:1], split), eq[:1], atol=1e-6, rtol=0)


# --- the network -------------------------------------------------------------------------------------

def test_attention_matches_torch() -> None:
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 8, bias=False, batch_first=True)
    ours = MultiheadAttention(32, 8)
    ours.load_state_dict(ref.state_dict())
    x, mem = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    torch.testing.assert_close(ours(x, x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x, mem), ref(x, mem, mem, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_official_state_dict_loads_unchanged(files: dict[str, Path], mbd: dict[str, MultiBandDiffusion]) -> None:
    """Every tensor audiocraft saved sits under the very same name in our modules (identity key mapping), the
    processors' julius filters included; reading the .th directly gives the same as its conversion."""
    for name in files:
        pkg = build_package(name, seed=COMBOS.index(name))
        direct = MultiBandDiffusion.from_file(files[name], "cpu")
        for i, band in enumerate(mbd[name].bands):
            for ours, official in ((band.unet.state_dict(), pkg[i]["model_state"]),
                                   (band.processor.state_dict(), pkg[i]["processor_state"])):
                assert set(ours) == set(official)
                for key, tensor in official.items():
                    assert torch.equal(ours[key], tensor), key
            assert (len(pkg[i]["processor_state"]) == 5) == band.processor.use  # empty when processor.use is false
        for a, b in zip(direct.state_dict().values(), mbd[name].state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_legacy_attention_keys(tmp_path: Path, mbd: dict[str, MultiBandDiffusion]) -> None:
    """Files whose attention weights lack the `.mha.` level load like audiocraft loads them."""
    path = build_mbd_checkpoint(tmp_path / "l.th", "transformer", 0, True)
    legacy = MultiBandDiffusion.from_file(path, "cpu")
    for a, b in zip(legacy.state_dict().values(), mbd["transformer"].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    models, _, _ = oracle.load_diffusion_models(path)  # audiocraft accepts the file too, with the same weights
    for band, model in zip(legacy.bands, models, strict=True):
        ours = band.unet.state_dict()
        assert all(torch.equal(ours[k], t) for k, t in model.state_dict().items())


@pytest.mark.parametrize(("combo", "band"), BANDS, ids=[f"{c}-{i}-{OPTION_SETS[c][i]}" for c, i in BANDS])
def test_unet_matches_audiocraft(mbd: dict[str, MultiBandDiffusion], reference: dict, combo: str, band: int) -> None:
    """Each band network against audiocraft's DiffusionUnet with the same weights: several lengths (ragged ones
    included), per-item steps, condition added at the bottleneck (in place) or cross-attended."""
    ours: DiffusionUnet = mbd[combo].bands[band].unet
    ref = reference[combo][0][band]
    g = torch.Generator().manual_seed(band)
    for length, steps in ((1001, [999, 3]), (1920, [0, 500]), (2560, [49, 949])):
        x = torch.randn(2, 1, length, generator=g)  # [B, C, S]
        cond = torch.randn(2, 128, math.ceil(length / 640), generator=g)  # [B, codec_dim, T]
        step = torch.tensor(steps)
        with torch.no_grad():
            got, want = ours(x, step, cond), ref(x, step, condition=cond).sample
        assert max_abs(got, want) <= UNET_TOL, (length, steps)
        assert got.abs().max() > 0.1  # not a degenerate network


@pytest.mark.parametrize("length", [1001, 2560])
def test_unet_keeps_length_and_uses_condition(mbd: dict[str, MultiBandDiffusion], length: int) -> None:
    g = torch.Generator().manual_seed(1)
    x, step = torch.randn(2, 1, length, generator=g), torch.tensor([999, 3])
    c1, c2 = torch.randn(2, 2, 128, 4, generator=g)
    for band in [*mbd["transformer"].bands, *mbd["mixed"].bands]:
        unet: DiffusionUnet = band.unet
        with torch.inference_mode():
            y1, y2 = unet(x, step, c1), unet(x, step, c2)
            y3 = unet(x, torch.tensor([500, 3]), c1)
        assert y1.shape == x.shape and y1.isfinite().all()
        # every conditioned band reacts to the condition, even without a bottleneck module: audiocraft zeroes the
        # bottleneck then, but its in-place add put the condition into the deepest skip connection too
        assert (y1 - y2).abs().max() > 1e-2 if unet.cfg.codec_dim is not None else torch.equal(y1, y2)
        assert (y1[0] - y3[0]).abs().max() > 1e-4 and torch.allclose(y1[1], y3[1], atol=1e-5)  # step is per item


def test_processors_match_audiocraft(tmp_path: Path, mbd: dict[str, MultiBandDiffusion], reference: dict) -> None:
    """return_sample (what decoding uses) and project_sample against audiocraft's MultiBandProcessor; bands whose
    processor is off are the identity (audiocraft's plain SampleProcessor)."""
    x = torch.randn(2, 1, 3000, generator=torch.Generator().manual_seed(2)) * 0.2  # [B, C, S]
    used = 0
    for combo in COMBOS:
        for band, ref in zip(mbd[combo].bands, reference[combo][1], strict=True):
            ours = band.processor
            assert ours.use == (type(ref).__name__ == "MultiBandProcessor")
            with torch.no_grad():
                assert max_abs(ours(x), ref.return_sample(x)) <= PROCESSOR_TOL
                assert max_abs(ours.project(x), ref.project_sample(x)) <= PROCESSOR_TOL
            if ours.use:
                used += 1
                assert max_abs(ours(x), x) > 1e-2 and max_abs(ours.project(x), x) > 1e-2
    assert used == 4
    # the band-split filters come from the checkpoint, as in audiocraft's strict load (not recomputed)
    pkg = build_package("transformer")
    pkg[3]["processor_state"]["split_bands.lowpass.filters"] *= 1.01
    torch.save(pkg, tmp_path / "filters.th")
    ours = MultiBandDiffusion.from_file(tmp_path / "filters.th", "cpu").bands[3].processor
    ref = oracle.load_diffusion_models(tmp_path / "filters.th")[1][3]
    assert max_abs(ours(x), ref.return_sample(x)) <= PROCESSOR_TOL
    assert max_abs(ours(x), mbd["transformer"].bands[3].processor(x)) > 1e-4


def test_config_defaults_and_validation() -> None:
    cfg = UNetConfig.from_band_cfg({"channels": 1, "schedule": {"num_steps": 1000}, "diffusion_unet": {"hidden": 48}})
    assert (cfg.depth, cfg.growth, cfg.kernel, cfg.stride, cfg.codec_dim) == (3, 2.0, 4, 2, None)  # audiocraft's
    with pytest.raises(CheckpointError, match="unknown diffusion_unet option 'attention'"):
        UNetConfig.from_band_cfg({"diffusion_unet": {"attention": True}})
    with pytest.raises(CheckpointError, match="hidden"):
        UNetConfig.from_band_cfg({"diffusion_unet": {"hidden": "wide"}})


# --- decoding ----------------------------------------------------------------------------------------

def test_decode_shape_seed_and_progress(mbd: dict[str, MultiBandDiffusion], codec: EnCodec) -> None:
    model, c = mbd["transformer"], codes(0)
    calls: list[tuple[int, int]] = []
    a = model.decode(c, codec, torch.Generator().manual_seed(7), progress=lambda i, n: calls.append((i, n)))
    assert a.shape == codec.decode(c).shape == (2, 1, FRAMES * 640) and a.dtype == torch.float32
    assert a.isfinite().all()
    assert calls == [(i, 80) for i in range(1, 81)] and model.total_steps == 80
    b = model.decode(c, codec, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)  # same seed, same audio
    d = model.decode(c, codec, torch.Generator().manual_seed(8))
    assert (a - d).abs().max() > 1e-3
    e = model.decode(codes(1), codec, torch.Generator().manual_seed(7))
    assert (a - e).abs().max() > 1e-3


@pytest.fixture(scope="module")
def audiocraft_mbd(files: dict[str, Path], codec: EnCodec) -> dict[str, Any]:
    """audiocraft's MultiBandDiffusion (get_mbd_musicgen) over the same files, sharing our EnCodec."""
    return {name: oracle.multiband_diffusion(path, codec) for name, path in files.items()}


def audiocraft_decode(model: Any, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """audiocraft's tokens_to_wav of one item [1, Q, T] -> [1, 1, S], its noise drawn from `generator`."""
    with oracle.noise_from([generator]):
        return model.tokens_to_wav(tokens)


@pytest.mark.parametrize("combo", COMBOS)
def test_decode_matches_audiocraft(mbd: dict[str, MultiBandDiffusion], audiocraft_mbd: dict[str, Any],
                                   codec: EnCodec, combo: str) -> None:
    """Tokens -> audio against audiocraft's MultiBandDiffusion.tokens_to_wav with identical noise: its four
    DiffusionProcesses (NoiseSchedule.generate_subsampled), processors and re-EQ; only the codec is shared."""
    for seed, n_frames in ((0, FRAMES), (1, 5)):
        tokens = codes(seed, batch=1, frames=n_frames)
        ours = mbd[combo].decode(tokens, codec, gens(seed, 1))
        want = audiocraft_decode(audiocraft_mbd[combo], tokens, gens(seed, 1)[0])
        assert max_abs(ours, want) <= DECODE_TOL
        assert max_abs(ours, codec.decode(tokens)) > 1e-2  # not just the EnCodec decode


def test_stereo_is_two_mono_decodes(mbd: dict[str, MultiBandDiffusion], audiocraft_mbd: dict[str, Any],
                                    codec: EnCodec) -> None:
    """Left and right as two batch items: each equals audiocraft's mono decode of that channel with that item's
    noise (audiocraft's own stereo MBD path fails, its issues #401 / #408), and our mono decode of it."""
    model = mbd["mixed"]
    left, right = codes(2, batch=1), codes(3, batch=1)
    both = model.decode(torch.cat([left, right]), codec, gens(5, 2))
    for i, channel in enumerate((left, right)):
        want = audiocraft_decode(audiocraft_mbd["mixed"], channel, gens(5, 2)[i])
        assert max_abs(both[i : i + 1], want) <= DECODE_TOL
        assert max_abs(both[i : i + 1], model.decode(channel, codec, [gens(5, 2)[i]])) <= 1e-5
    assert max_abs(both[0], both[1]) > 1e-2
    # a single generator seeds the items in order, so it matches the explicit list
    torch.testing.assert_close(model.decode(torch.cat([left, right]), codec, torch.Generator().manual_seed(5)), both,
                               atol=0, rtol=0)


def test_decode_rejects_bad_input(mbd: dict[str, MultiBandDiffusion], codec: EnCodec) -> None:
    model = mbd["transformer"]
    for bad in (codes(0)[0], codes(0)[:, :2], codes(0).float(), codes(0) + 64, codes(0) - 65):
        with pytest.raises(InvalidInputError):
            model.decode(bad, codec)
    with pytest.raises(InvalidInputError, match="generators"):
        model.decode(codes(0), codec, gens(0, 3))


# --- safe loading, conversion, cache -----------------------------------------------------------------

@pytest.mark.parametrize("how", ["os.system", "eval"])
def test_malicious_pickle_is_refused(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    if how == "os.system":
        path = build_malicious_checkpoint(tmp_path / "evil.th", os.system, f"touch {marker}")
        name = f"{os.system.__module__}.system"
    else:
        path = build_malicious_checkpoint(tmp_path / "evil.th", eval, f"open({str(marker)!r}, 'w')")
        name = "builtins.eval"
    with pytest.raises(CheckpointError, match=f"refusing to unpickle .*{name}"):
        MultiBandDiffusion.from_file(path, "cpu")
    with pytest.raises(CheckpointError, match=name):
        ckpt_io.convert(path, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_other_pickle_protocols_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p4.th"
    torch.save(build_package("transformer"), path, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        ckpt_io.read_pickle(path)


def test_corrupted_files_are_clear_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    data = files["transformer"].read_bytes()
    for name, content in [("short.th", data[: len(data) // 2]), ("noise.th", os.urandom(4096)),
                          ("flipped.th", data[:3000] + bytes(b ^ 0xFF for b in data[3000:6000]) + data[6000:])]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="truncated or corrupted|refusing|cannot"):
            MultiBandDiffusion.from_file(tmp_path / name, "cpu")


def test_wrong_structure_is_refused(tmp_path: Path) -> None:
    pkg = build_package("transformer")
    pkg[1]["model_state"]["encoders.0.conv.weight"] = torch.zeros(3, 1, 8)
    torch.save(pkg, tmp_path / "shape.th")
    with pytest.raises(CheckpointError, match="band 1: tensor encoders.0.conv.weight has shape"):
        MultiBandDiffusion.from_file(tmp_path / "shape.th", "cpu")
    pkg = build_package("transformer")
    del pkg[3]
    torch.save(pkg, tmp_path / "bands.th")
    with pytest.raises(CheckpointError, match="band 3: missing"):
        MultiBandDiffusion.from_file(tmp_path / "bands.th", "cpu")
    for band, key, value, message in [
            (2, "split_bands.lowpass.extra", torch.zeros(1), "band 2: processor_state has tensor.* not explain"),
            (0, "counts", torch.ones(1), "band 0: processor_state has tensor.* not explain"),  # processor off
            (3, "split_bands.lowpass.filters", torch.zeros(7, 1, 9), "band 3: tensor processor_state.split_bands"),
            (2, "split_bands.lowpass.filters", None, "band 2: processor_state lacks 1 tensor")]:
        pkg = build_package("transformer")
        if value is None:
            del pkg[band]["processor_state"][key]
        else:
            pkg[band]["processor_state"][key] = value
        torch.save(pkg, tmp_path / "processor.th")
        with pytest.raises(CheckpointError, match=message):
            MultiBandDiffusion.from_file(tmp_path / "processor.th", "cpu")
        with pytest.raises(CheckpointError, match=message):
            ckpt_io.convert(tmp_path / "processor.th", tmp_path / "processor")
    torch.save({"state": {}}, tmp_path / "other.th")
    with pytest.raises(CheckpointError, match="not an MBD checkpoint"):
        MultiBandDiffusion.from_file(tmp_path / "other.th", "cpu")


def test_config_is_converted_to_plain_json(files: dict[str, Path]) -> None:
    config, _ = ckpt_io.parse(ckpt_io.read_pickle(files["mixed"]), "mixed")
    json.dumps(config)  # plain values only
    band = config["bands"][1]
    assert band["diffusion_unet"]["cross_attention"] is True and band["diffusion_unet"]["hidden"] == 16
    assert band["schedule"]["beta_exp"] == 7.5 and band["processor"]["use"] is False
    assert config["bands"][3]["processor"]["power_std"] == 0.75 and config["sample_rate"] == SR
    assert ckpt_io.resolve({"a": "${x.y}", "b": "${nope}"}, {"x": {"y": 3}}) == {"a": 3, "b": "${nope}"}


def fake_cache_download(tmp_path: Path, source: Path) -> Path:
    """A file laid out like hf_hub_download leaves it: snapshots/<commit>/file -> ../../blobs/<hash>."""
    repo = tmp_path / "hub" / "models--facebook--multiband-diffusion"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / "c0ffee").mkdir(parents=True, exist_ok=True)
    blob = repo / "blobs" / "b10b"
    blob.write_bytes(source.read_bytes())
    link = repo / "snapshots" / "c0ffee" / ckpt_io.FILENAME
    link.unlink(missing_ok=True)
    link.symlink_to(Path("../../blobs/b10b"))
    return link


def test_from_pretrained_converts_once_and_repairs(tmp_path: Path, files: dict[str, Path], codec: EnCodec,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    link = fake_cache_download(tmp_path, files["transformer"])
    monkeypatch.setattr(ckpt_io, "download", lambda revision=None, cache_dir=None: link)
    want = MultiBandDiffusion.from_file(files["transformer"], "cpu").decode(codes(4), codec, gens(1, 2))
    model = MultiBandDiffusion.from_pretrained(device="cpu")
    folder = ckpt_io.converted_folder(link)
    assert folder == link.parents[2] / "musicgen-converted" / "b10b"
    assert sorted(p.name for p in folder.iterdir()) == ["band0", "band1", "band2", "band3", "config.json"]
    torch.testing.assert_close(model.decode(codes(4), codec, gens(1, 2)), want, atol=0, rtol=0)
    link.resolve().write_bytes(b"")  # the .th is no longer read once converted
    MultiBandDiffusion.from_pretrained(device="cpu")
    (folder / "band2" / "model.safetensors").write_bytes(b"\0" * 64)  # a damaged conversion is redone
    fake_cache_download(tmp_path, files["transformer"])
    MultiBandDiffusion.from_pretrained(device="cpu")
    assert (folder / "band2" / "model.safetensors").stat().st_size > 64
    config = json.loads((folder / "config.json").read_text())  # a conversion by an older version is redone
    (folder / "config.json").write_text(json.dumps({**config, "format_version": ckpt_io.FORMAT_VERSION - 1}))
    MultiBandDiffusion.from_pretrained(device="cpu")
    assert json.loads((folder / "config.json").read_text())["format_version"] == ckpt_io.FORMAT_VERSION
    # a corrupted download is an error that removes it from the cache (pointer and blob)
    shutil.rmtree(folder)
    link.resolve().write_bytes(files["transformer"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="removed from the cache"):
        MultiBandDiffusion.from_pretrained(device="cpu")
    assert not link.exists() and not link.is_symlink() and not (link.parents[2] / "blobs" / "b10b").exists()


def test_download_errors_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(ckpt_io, "hf_hub_download", offline)
    with pytest.raises(DownloadError, match="unreachable .* not in the local cache"):
        MultiBandDiffusion.from_pretrained(device="cpu")


_RUNNER = r"""
import json, sys
from pathlib import Path
import torch
from musicgen import MusicGenError
from musicgen.diffusion import MultiBandDiffusion
from huggingface_hub import scan_cache_dir
try:
    mbd = MultiBandDiffusion.from_pretrained(device="cpu")
    total = sum(float(t.double().sum()) for t in mbd.state_dict().values())
    print(json.dumps({"checksum": total, "warnings": [str(w) for w in scan_cache_dir().warnings]}))
except MusicGenError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def run_from_pretrained(env: dict[str, str]) -> dict:
    return run_json(_RUNNER, env)


def test_hub_download_convert_offline_and_redownload(tmp_path: Path, files: dict[str, Path]) -> None:
    """The real hf_hub_download path: download + convert; offline from the conversion; a corrupted cached file
    is an error, deleted, and downloaded again by the next call."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ckpt_io.FILENAME).write_bytes(files["transformer"].read_bytes())
    model = MultiBandDiffusion.from_file(files["transformer"], "cpu")
    want = sum(float(t.double().sum()) for t in model.state_dict().values())
    hf_home = tmp_path / "hf"
    cached = hf_home / "hub" / "models--facebook--multiband-diffusion"
    with FakeHub({ckpt_io.REPO_ID: repo}) as hub:
        env = hub_env(hub.endpoint, hf_home)
        assert run_from_pretrained(env) == {"checksum": pytest.approx(want, rel=1e-12), "warnings": []}
        blob = next((cached / "blobs").iterdir())
        assert len(list((cached / "musicgen-converted").iterdir())) == 1
        blob.write_bytes(b"truncated")  # later runs load the conversion, never the .th
        assert run_from_pretrained(hub_env(hub.endpoint, hf_home, offline=True))["checksum"] == pytest.approx(want)
        shutil.rmtree(cached / "musicgen-converted")  # now the damaged .th must be read: refused and deleted
        got = run_from_pretrained(env)
        assert got["error"] == "CheckpointError" and "downloads it again" in got["message"]
        assert not blob.exists()
        assert run_from_pretrained(env)["checksum"] == pytest.approx(want, rel=1e-12)
        assert hub.requested_files(ckpt_io.REPO_ID).count(ckpt_io.FILENAME) == 2
