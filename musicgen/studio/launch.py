"""Start the studio: command-line options, the Gradio queue and server (app.py, the Space's entry point, calls
`main`).

    python app.py [--share] [--server-name 0.0.0.0] [--port 7860] [--device cpu] [--quantize int8]
"""

from __future__ import annotations

import argparse
import logging
import os

import gradio as gr
import torch

from ..errors import InvalidInputError
from ..layout import QUANTIZE
from ..pipeline import default_device
from ..serve import MAX_ROWS
from . import catalog
from .backend import Studio, readable_input_errors
from .page import build_demo
from .page_text import CSS

log = logging.getLogger("musicgen.app")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MusicGen studio: the web app")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--server-name", default=None, help="interface to listen on, e.g. 0.0.0.0 [127.0.0.1]")
    p.add_argument("--port", type=int, default=None, help="port [7860, or the next free one]")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... [cuda if available, else cpu]")
    p.add_argument("--quantize", choices=["auto", *[q for q in QUANTIZE if q], "none"], default="auto",
                   help="int8 language model, ~2.6x faster on CPU; int8-weight-only: float activations, closer "
                   "to float32 [auto: int8 on CPU, none on CUDA]")
    p.add_argument("--models", default=os.environ.get(catalog.ENV_MODELS, ""),
                   help="the owner's models offered beside Meta's: 'Name=user/repo; Other=/path/to/folder' (Hub ids or "
                   f"local folders; also the {catalog.ENV_MODELS} variable, for Spaces) ['']")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting at most [16]")
    p.add_argument("--batch-rows", type=int, default=MAX_ROWS,
                   help=f"decode-step rows shared by visitors, 2 per request (continuous batching); 0: one "
                   f"generation at a time [{MAX_ROWS}]")
    return p


def serve(st: Studio, *, share: bool = False, server_name: str | None = None, port: int | None = None,
          max_queue: int = 16, prevent_thread_lock: bool = False, quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Build the page, queue it (`st.concurrency` generations at once, at most `max_queue` waiting) and serve;
    returns (demo, local URL)."""
    demo = build_demo(st)
    readable_input_errors(demo)
    # api_open=False: every route goes through the queue and its limits (the REST route /run/... would not)
    demo.queue(max_size=max_queue, default_concurrency_limit=1, api_open=False)
    _, url, _ = demo.launch(share=share, server_name=server_name, server_port=port, css=CSS, quiet=quiet,
                            theme=gr.themes.Default(primary_hue="orange"), max_file_size="50mb",
                            prevent_thread_lock=prevent_thread_lock)
    return demo, url


def default_quantize(choice: str, device: str | None) -> str | None:
    """--quantize auto: int8 when the model runs on the CPU (faster than real time there for musicgen-small;
    mean KL 0.001 nats from float32)."""
    if choice != "auto":
        return None if choice == "none" else choice
    on_cpu = (torch.device(device) if device else default_device()).type == "cpu"
    return "int8" if on_cpu else None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        models = catalog.parse_models(args.models)
    except InvalidInputError as e:
        raise SystemExit(f"--models: {e}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # the decode loop gets the CPU's intra-op threads; every other thread runs torch ops inline (serve.py,
    # own_intra_op_threads: a second OpenMP pool would make every step ~1.6x slower), model loading included
    threads = torch.get_num_threads()
    if args.batch_rows:
        torch.set_num_threads(1)
    st = Studio(device=args.device, batch_rows=args.batch_rows, threads=threads,
                quantize=default_quantize(args.quantize, args.device), models=models)
    log.info("device %s; live preview %s", st.cache.device, "on" if st.stream else "off (install ffmpeg)")
    serve(st, share=args.share, server_name=args.server_name, port=args.port, max_queue=args.max_queue)

