"""The Gradio Blocks: scene / sample pickers with playback, camera + BEV + 3D views, tables, run metrics, QA chat.

Events (API names in brackets): changing the scene, sample, modality, score threshold or sweeps redraws the views
[`show`]; a question runs [`ask`] (sample token, question) -> (answer text, score, grounded boxes), then redraws the
views with the grounded objects outlined.
"""

from __future__ import annotations

import gradio as gr

from fusion.app import chat
from fusion.app.metrics import DIFFERENCE_HEADERS, METRIC_HEADERS, difference_rows, metric_rows, pr_curves_or_message
from fusion.app.state import AppState
from fusion.app.views import ANNOTATION_HEADERS, DETECTION_HEADERS, Overlay, render_sample
from fusion.viz.draw import legend_html

MODALITY_CHOICES = [("fused (camera + LiDAR)", "fused"), ("LiDAR-only", "lidar"), ("camera-only", "camera")]


def _slider(n: int, value: int = 0) -> gr.Slider:
    return gr.Slider(0, max(n - 1, 0), value=min(value, max(n - 1, 0)), step=1, label="sample in scene")


def build_app(state: AppState) -> gr.Blocks:
    browser = state.browser
    with gr.Blocks(title="fusion", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# fusion — camera + LiDAR 3D detection and scene QA")
        if browser is None:
            gr.Markdown(state.data_error)
            return app
        scenes = browser.scenes()
        first = scenes[0]["token"]
        status = [state.model_message, state.qa_message]
        gr.Markdown("\n\n".join(m for m in status if m), elem_id="status")
        with gr.Row():
            scene = gr.Dropdown([(f"{s['name']} — {s['description']}", s["token"]) for s in scenes], value=first,
                                label="scene", scale=3, elem_id="scene")  # fmt: skip
            index = _slider(len(browser.samples(first)))
            prev_btn = gr.Button("◀ prev", scale=0, min_width=80)
            play_btn = gr.Button("▶ play", scale=0, min_width=80)
            next_btn = gr.Button("next ▶", scale=0, min_width=80)
        with gr.Row():
            modality = gr.Radio(MODALITY_CHOICES, value="fused", label="model input (reruns the detector)", scale=3)
            threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="min prediction score", scale=2)
            sweeps = gr.Slider(1, 10, value=1, step=1, label="LiDAR sweeps shown", scale=1)
            token = gr.Textbox(label="sample token", elem_id="sample-token", scale=2)
        gr.HTML(legend_html())
        with gr.Row():
            gallery = gr.Gallery(label="cameras", columns=3, height="auto", scale=3, elem_id="cameras")
            bev = gr.Image(label="LiDAR bird's-eye view (forward up)", scale=2, elem_id="bev")
        with gr.Row():
            scene3d = gr.Model3D(
                label="3D view (drag to rotate, scroll to zoom)",
                clear_color=(1, 1, 1, 1),
                height=520,
                scale=3,
                camera_position=(-90, 55, 45),
            )
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="scene QA", height=260, elem_id="chat")
                question = gr.Textbox(label="question", placeholder="How many cars are parked?", elem_id="question")
                ask_btn = gr.Button("Ask", variant="primary", elem_id="ask")
                with gr.Row():
                    answer = gr.Textbox(label="answer", interactive=False, elem_id="answer", scale=2)
                    score = gr.Number(label="answer score", interactive=False, precision=3, scale=1)
                with gr.Accordion("grounded objects (JSON)", open=False):
                    grounded = gr.JSON(label="grounded objects")
        with gr.Tab("detections"):
            detections = gr.Dataframe(headers=DETECTION_HEADERS, label="predictions (this sample)", wrap=True)
        with gr.Tab("annotations"):
            annotations = gr.Dataframe(headers=ANNOTATION_HEADERS, label="annotations (GT)")
        with gr.Tab("run metrics"):
            rows = metric_rows(state.config.run_dir)
            where = f"`{state.config.run_dir}/{{fused,lidar_only,camera_only}}/metrics.json`"
            gr.Markdown(f"From {where}." if rows else f"No metrics at {where} yet: `make run` writes them.")
            gr.Dataframe(headers=METRIC_HEADERS, value=rows or None)
            differences = difference_rows(state.config.run_dir)
            if differences:
                gr.Markdown("How sure the order is: each difference with its 95% interval over 1,000 resamples of "
                            "the validation samples, and how often the first is ahead (`bootstrap.json`; "
                            "docs/evaluation.md).")  # fmt: skip
                gr.Dataframe(headers=DIFFERENCE_HEADERS, value=differences)
            pr_btn = gr.Button("show PR curves (fused)")
            pr_gallery = gr.Gallery(label="PR curves", columns=2, height="auto")
        timer = gr.Timer(1.0, active=False)
        playing = gr.State(False)

        def show(scene_token, i, n_sweeps, mod, min_score, payload):  # gradio refuses a scene not in the dropdown
            samples = browser.samples(scene_token)
            sample_token = samples[min(max(int(i), 0), len(samples) - 1)]
            extra, lit = chat.grounded_boxes(payload, sample_token, set(browser.nusc.get("sample", sample_token)
                                                                            ["anns"]))  # fmt: skip
            try:
                predictions = state.predictions(sample_token, mod, float(min_score))
            except Exception as e:  # a broken file or model: show the data anyway, say what failed
                gr.Warning(f"the detector failed on sample {sample_token}: {type(e).__name__}: {e}")
                predictions = None
            overlay = Overlay(predictions, extra, lit)
            v = render_sample(browser, sample_token, overlay, min(max(int(n_sweeps), 1), 10), glb_dir=state.tmp)
            return (sample_token, v.cameras, v.bev, state.keep_file(v.glb), v.detections or None,
                    v.annotations or None)  # fmt: skip

        view_inputs = [scene, index, sweeps, modality, threshold, grounded]
        view_outputs = [token, gallery, bev, scene3d, detections, annotations]
        for control in (index, sweeps, modality, threshold):
            control.change(show, view_inputs, view_outputs, api_name=False, trigger_mode="always_last")
        # A new scene starts at its first sample; redraw even when the slider was already at 0 (no change event).
        scene.change(lambda s: _slider(len(browser.samples(s))), scene, index, api_name=False).then(
            show, view_inputs, view_outputs, api_name=False
        )
        app.load(show, view_inputs, view_outputs, api_name="show")

        def step(scene_token, i, delta, wrap=False):
            n = len(browser.samples(scene_token))
            j = int(i) + delta
            return _slider(n, j % n if wrap else min(max(j, 0), n - 1))

        prev_btn.click(lambda s, i: step(s, i, -1), [scene, index], index, api_name=False)
        next_btn.click(lambda s, i: step(s, i, +1), [scene, index], index, api_name=False)
        timer.tick(lambda s, i: step(s, i, +1, wrap=True), [scene, index], index, api_name=False)

        def toggle(on):
            return (not on), gr.Timer(active=not on), gr.Button("⏸ pause" if not on else "▶ play")

        play_btn.click(toggle, playing, [playing, timer, play_btn], api_name=False)

        def ask(sample_token: str, text: str):
            return chat.ask(state, sample_token, text)

        def remember(history, text, reply, p):
            shown = reply if reply.startswith(chat.WARNING) else f"{reply}  (score {p:.2f})"
            text = text if len(text or "") <= 300 else f"{text[:300]}… ({len(text)} characters)"
            return [*(history or []), {"role": "user", "content": text or "(empty)"},
                    {"role": "assistant", "content": shown}], ""  # fmt: skip

        asked = ask_btn.click(ask, [token, question], [answer, score, grounded], api_name="ask")
        submitted = question.submit(ask, [token, question], [answer, score, grounded], api_name=False)
        for event in (asked, submitted):
            event.then(remember, [chatbot, question, answer, score], [chatbot, question], api_name=False).then(
                show, view_inputs, view_outputs, api_name=False
            )

        def curves():
            pictures, message = pr_curves_or_message(state.config.run_dir, state.config.dataroot,
                                                     state.config.version, state.tmp)  # fmt: skip
            if message:
                gr.Warning(message)
            return pictures

        pr_btn.click(curves, None, pr_gallery, api_name=False)
    return app
