"""fusion app: browse a nuScenes dataroot (the synthetic world by default) — six cameras and a LiDAR bird's-eye view
with the annotated boxes, and the sample's annotations.

    python app.py [--port 7860] [--host 127.0.0.1] [--dataroot data/synthetic] [--version v1.0-mini]

Binds to 127.0.0.1 unless told otherwise. Only files named by the dataset's tables are read.
"""

from __future__ import annotations

import argparse
import os
import sys

import gradio as gr
import numpy as np

from fusion.data.browse import CAMERA_ORDER, Browser
from fusion.data.summary import DatasetError
from fusion.viz.draw import draw_bev, draw_camera_boxes

DEFAULT_DATAROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "synthetic")


def render(browser: Browser, sample_token: str, nsweeps: int = 1) -> tuple[list, np.ndarray, list[list]]:
    """The six camera images with boxes, the BEV picture, and the annotation rows of one sample."""
    cams = []
    for channel in CAMERA_ORDER:
        image, boxes = browser.camera(sample_token, channel)
        cams.append((draw_camera_boxes(image, boxes), channel))
    points, footprints = browser.lidar(sample_token, nsweeps=nsweeps)
    rows = [list(r.values()) for r in browser.annotations(sample_token)]
    return cams, draw_bev(points, footprints), rows


def build_app(dataroot: str, version: str) -> gr.Blocks:
    try:
        browser = Browser(dataroot, version)
        error = None
    except DatasetError as e:
        browser, error = None, str(e)
    with gr.Blocks(title="fusion") as app:
        gr.Markdown("# fusion — scene browser")
        if browser is None:
            gr.Markdown(f"**No dataset:** {error}\n\nMake one with `make run` (or `.venv/bin/fusion synth --out "
                        f"{dataroot}`), then restart the app.")  # fmt: skip
            return app
        scenes = browser.scenes()
        choices = [(f"{s['name']} — {s['description']}", s["token"]) for s in scenes]
        with gr.Row():
            scene = gr.Dropdown(choices=choices, value=scenes[0]["token"], label="scene", scale=3)
            index = gr.Slider(0, len(browser.samples(scenes[0]["token"])) - 1, value=0, step=1, label="sample")
            nsweeps = gr.Slider(1, 10, value=1, step=1, label="LiDAR sweeps")
        token = gr.Textbox(label="sample token", interactive=False)
        with gr.Row():
            gallery = gr.Gallery(label="cameras", columns=3, height="auto", scale=3)
            bev = gr.Image(label="LiDAR (bird's-eye view, forward up)", scale=2)
        table = gr.Dataframe(headers=["class", "attribute", "distance (m)", "speed (m/s)", "LiDAR pts", "visibility"],
                             label="annotations")  # fmt: skip

        def show(scene_token: str, i: float, sweeps: float):
            samples = browser.samples(scene_token)
            sample_token = samples[min(int(i), len(samples) - 1)]
            cams, picture, rows = render(browser, sample_token, int(sweeps))
            return sample_token, cams, picture, rows

        def pick_scene(scene_token: str):
            return gr.Slider(0, len(browser.samples(scene_token)) - 1, value=0, step=1, label="sample")

        outputs = [token, gallery, bev, table]
        scene.change(pick_scene, scene, index)
        for control in (scene, index, nsweeps):
            control.change(show, [scene, index, nsweeps], outputs)
        app.load(show, [scene, index, nsweeps], outputs)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dataroot", default=DEFAULT_DATAROOT)
    parser.add_argument("--version", default="v1.0-mini")
    args = parser.parse_args(argv)
    build_app(args.dataroot, args.version).queue().launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
