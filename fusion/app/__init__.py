"""The Gradio app: scene browser, camera / BEV / 3D views with GT and predictions, run metrics, scene QA chat.

`app.py` at the repository root is the entry point (`python app.py --port 7860`); `build_app` builds the Blocks.
Only this package and `fusion.viz` import gradio and open3d.
"""
