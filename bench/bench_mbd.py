"""Benchmark: multi-band diffusion decode vs EnCodec decode on CPU, real-size networks with random weights.

    .venv/bin/python bench/bench_mbd.py                      # 10 s of audio: EnCodec timed, MBD extrapolated
    .venv/bin/python bench/bench_mbd.py --full               # also time a full 10 s MBD decode (~30+ min on 2 cores)
    .venv/bin/python bench/bench_mbd.py --unet hidden=32,transformer=false,bilstm=true   # another band shape

The released hyper-parameters live only inside mbd_musicgen_32khz.th. Without it, each band uses the
shape we infer as the most likely (`LIKELY_UNET`: audiocraft's config/model/score/basic.yaml, plus the
128-dim EnCodec condition and the transformer bottleneck that conditioning needs; see the report).
MBD cost is linear in the audio length up to the bottleneck attention, so by default the script times a
full MBD decode (80 UNet calls + re-EQ) of `--clip` seconds, one UNet call per band at the full length,
and extrapolates: full = 20 x (sum of the per-band calls at full length) + the clip's non-UNet overhead.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgen.codec import EnCodec  # noqa: E402
from musicgen.config import CodecConfig  # noqa: E402
from musicgen.diffusion import MultiBandDiffusion  # noqa: E402
from musicgen.studio.waits import CALIBRATION, DiffusionClock  # noqa: E402
from musicgen.unet import RES_KERNEL, TRANSFORMER_FFN, TRANSFORMER_LAYERS, UNetConfig  # noqa: E402

SR, HOP = 32_000, 640
LIKELY_UNET = dict(hidden=48, depth=4, res_blocks=1, norm_groups=4, kernel=8, stride=4, growth=4, max_channels=10_000,
                   dropout=0.0, emb_all_layers=True, bilstm=False, codec_dim=128, transformer=True,
                   cross_attention=False)
SCHEDULE = dict(repartition="power", beta_t0=1e-5, beta_t1=2.9e-2, beta_exp=7.5, num_steps=1000, clip=5.0,
                rescale=1.0, n_bands=None, noise_scale=1.0)
PROCESSORS = [dict(use=False), dict(use=False), dict(use=True, power_std=0.4), dict(use=True, power_std=0.75)]
CODEC = CodecConfig(sample_rate=SR, channels=1, dim=128, num_filters=64, num_residual_layers=1, ratios=(8, 5, 4, 4),
                    kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2, causal=False,
                    pad_mode="reflect", compress=2, num_lstm_layers=2, trim_right_ratio=1.0, codebook_size=2048,
                    num_quantizers=4, conv_shortcut=False)



def approx_macs(cfg: UNetConfig, samples: int) -> float:
    """Multiply-accumulates of one forward pass over `samples` audio samples (convolutions, attention)."""
    total, length, chin = 0.0, samples, cfg.channels
    for w in cfg.widths():
        length = math.ceil(length / cfg.stride)
        conv = chin * w * cfg.kernel * length + cfg.res_blocks * 2 * w * w * RES_KERNEL * length
        total += 2 * conv  # encoder level and its mirror decoder level
        chin = w
    if cfg.transformer:
        per_layer = 4 * chin * chin * length + 2 * chin * TRANSFORMER_FFN * length + 2 * length * length * chin
        total += TRANSFORMER_LAYERS * per_layer * (1.5 if cfg.cross_attention else 1.0)
    return total

def parse_unet(spec: str) -> dict:
    unet = dict(LIKELY_UNET)
    for item in filter(None, spec.split(",")):
        key, value = item.split("=")
        words = {"true": True, "false": False, "none": None}
        unet[key] = words[value.lower()] if value.lower() in words else float(value) if "." in value else int(value)
    return unet


def random_mbd(unet: dict) -> MultiBandDiffusion:
    """The real MultiBandDiffusion class with random weights (built band by band, no file)."""
    config = {"sample_rate": SR, "n_bands": 4, "bands": [
        {"channels": 1, "sample_rate": SR, "diffusion_unet": unet, "schedule": SCHEDULE,
         "processor": {"name": "multi_band_processor", "n_bands": 8, "num_samples": 10_000, **p}}
        for p in PROCESSORS]}
    mbd = MultiBandDiffusion(config, "random MBD")
    g = torch.Generator().manual_seed(0)
    for band in mbd.bands:
        band.unet.to_empty(device="cpu")
        for name, p in band.unet.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.zeros_(p)
            elif "norm" in name:
                torch.nn.init.ones_(p)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                with torch.no_grad():
                    p.normal_(0, fan_in**-0.5, generator=g)
        band.unet.eval().requires_grad_(False)
        if band.processor.use:  # plausible training statistics: std 0.1, target mean square 0.1
            band.processor.counts.fill_(1e4)
            band.processor.sum_x2.fill_(0.01 * 1e4)
            band.processor.sum_target_x2.fill_(0.1 * 1e4)
    return mbd


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clip", type=float, default=1.0, help="seconds of audio for the timed full MBD decode")
    ap.add_argument("--full", action="store_true", help="also time a full MBD decode of --seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unet", default="", help="overrides of the band shape, e.g. hidden=32,transformer=false")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unet = parse_unet(args.unet)
    cfg = UNetConfig.from_band_cfg({"channels": 1, "schedule": SCHEDULE, "diffusion_unet": unet})
    frames, clip_frames = round(args.seconds * SR / HOP), round(args.clip * SR / HOP)

    torch.manual_seed(0)
    codec = EnCodec(CODEC).eval().requires_grad_(False)
    torch.nn.init.normal_(codec.codebooks)
    t0 = time.perf_counter()
    mbd = random_mbd(unet)
    params = sum(p.numel() for b in mbd.bands for p in b.unet.parameters())
    print(f"band UNet: {unet}")
    print(f"widths {cfg.widths()}, {params / 4 / 1e6:.1f} M parameters per band, {params / 1e6:.0f} M in total "
          f"({params * 4 / 1e9:.1f} GB float32); built in {time.perf_counter() - t0:.0f} s; {args.threads} threads")

    codes = torch.randint(0, 2048, (1, 4, frames), generator=torch.Generator().manual_seed(1))
    codec.decode(codes[..., :50])  # warm-up
    t_codec, _ = timed(codec.decode, codes)
    print(f"EnCodec decode of {args.seconds:g} s: {t_codec:.2f} s")

    with torch.inference_mode():
        x = torch.randn(1, 1, frames * HOP)
        cond = codec.latent(codes)
        step = torch.full((1,), 999)
        per_band = [timed(band.unet, x, step, cond)[0] for band in mbd.bands]
    macs = approx_macs(cfg, frames * HOP)
    print(f"one UNet call on {args.seconds:g} s, per band: " + ", ".join(f"{t:.1f} s" for t in per_band)
          + f" (~{macs / 1e9:.0f} GMAC each, {2 * macs / 1e9 / (sum(per_band) / 4):.0f} GFLOP/s)")

    clip = codes[..., :clip_frames]
    clock = DiffusionClock(mbd, HOP)
    t_cal, wait = timed(clock.estimate, clip_frames * HOP / SR)
    t_clip, _ = timed(mbd.decode, clip, codec, torch.Generator().manual_seed(0))
    print(f"the studio's expected time (waits.DiffusionClock, timed in {t_cal:.1f} s): {wait.seconds:.1f} s for "
          f"{args.clip:g} s ({wait.per_call:.2f} s per call); measured {t_clip:.1f} s "
          f"({100 * (wait.seconds / t_clip - 1):+.0f} %)")
    with torch.inference_mode():
        xc = torch.randn(1, 1, clip_frames * HOP)
        unet_clip = sum(timed(b.unet, xc, step, codec.latent(clip))[0] for b in mbd.bands)
    overhead = max(t_clip - 20 * unet_clip, 0.0)
    estimate = 20 * sum(per_band) + overhead * frames / clip_frames
    print(f"MBD decode of {args.clip:g} s (measured, 80 UNet calls + re-EQ): {t_clip:.1f} s")
    print(f"MBD decode of {args.seconds:g} s (extrapolated: 20 x per-band calls + scaled overhead): {estimate:.0f} s "
          f"= {estimate / 60:.1f} min, {estimate / t_codec:.0f}x EnCodec, "
          f"real-time factor {estimate / args.seconds:.1f}")
    wait = DiffusionClock(mbd, HOP).estimate(frames * HOP / SR)  # from the short calibration alone
    print(f"the studio's expected time for {args.seconds:g} s (calibrated on {CALIBRATION} s only): "
          f"{wait.seconds:.0f} s ({100 * (wait.seconds / estimate - 1):+.0f} % from the extrapolation above)")
    if args.full:
        t_full, _ = timed(mbd.decode, codes, codec, torch.Generator().manual_seed(0))
        print(f"MBD decode of {args.seconds:g} s (measured): {t_full:.0f} s")


if __name__ == "__main__":
    main()
