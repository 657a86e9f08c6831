"""Launching the app: command line, queue, and what gradio may serve.

python app.py [--port 7860] [--host 127.0.0.1] [--dataroot DIR] [--version V] [--run DIR]
              [--checkpoint CKPT] [--qa-checkpoint CKPT]
"""

from __future__ import annotations

import argparse

import gradio as gr

from fusion.app.layout import build_app
from fusion.app.state import AppConfig, AppState

CONCURRENCY = 4  # events run at once; the rest wait in the queue (the detector and QA models take a lock anyway)


def create_app(config: AppConfig, **parts) -> tuple[gr.Blocks, AppState]:
    """The Blocks and their state; `parts` (browser, predictor, qa) replace what would load from `config`."""
    state = AppState(config, **parts)
    app = build_app(state)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=256)
    return app, state


def launch(app: gr.Blocks, state: AppState, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> None:
    """Serve on host:port. Besides its own cache, gradio may serve files from the app's temp folder only; the data
    root and the outputs folder are blocked explicitly."""
    blocked = [state.config.dataroot, state.config.run_dir]
    app.launch(server_name=host, server_port=port, allowed_paths=[state.tmp], blocked_paths=blocked,
               prevent_thread_lock=not block, show_error=True, quiet=not block)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[AppConfig, str, int]:
    defaults = AppConfig()
    p = argparse.ArgumentParser(prog="app.py", description="fusion app: scene browser, detections and scene QA")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    p.add_argument("--dataroot", default=defaults.dataroot, help="nuScenes dataroot (default: the synthetic world)")
    p.add_argument("--version", default=defaults.version)
    p.add_argument("--run", default=defaults.run_dir, help="a `make run` output folder (metrics, checkpoints)")
    p.add_argument("--checkpoint", default=None, help="detector checkpoint (default: RUN/checkpoints/last.ckpt)")
    p.add_argument(
        "--qa-checkpoint",
        default=None,
        help="scene-QA checkpoint (default: RUN/qa/qa.ckpt, else the newest under RUN/qa/)",
    )
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    config = AppConfig(dataroot=a.dataroot, version=a.version, run_dir=a.run, checkpoint=a.checkpoint,
                       qa_checkpoint=a.qa_checkpoint, device=a.device)  # fmt: skip
    return config, a.host, a.port


def main(argv: list[str] | None = None) -> int:
    config, host, port = parse_args(argv)
    app, state = create_app(config)
    for message in (state.data_error, state.model_message, state.qa_message):
        if message:
            print(message)
    launch(app, state, host, port)
    return 0
