"""What the app holds for its lifetime: the dataroot's `Browser`, the detector, the scene-QA model, its temp folder.

Each part loads on its own; a missing dataset, checkpoint or QA checkpoint leaves that part out with a message that
says how to make it (`make run`), and the rest of the app still works.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fusion.data.browse import Boxes3D, Browser
from fusion.data.summary import DatasetError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class AppConfig:
    """dataroot / version: the nuScenes dataroot shown. run_dir: a `make run` output folder (metrics, PR curves).
    checkpoint / qa_checkpoint: None takes the run's (`<run_dir>/checkpoints/last.ckpt`, `<run_dir>/qa/qa.ckpt`)."""

    dataroot: str = str(REPO / "data" / "synthetic")
    version: str = "v1.0-mini"
    run_dir: str = str(REPO / "outputs" / "latest")
    checkpoint: str | None = None
    qa_checkpoint: str | None = None
    device: str = "cpu"
    cache_dir: str | None = None  # split-index cache (None: $FUSION_CACHE_DIR or ~/.cache/fusion)

    def detector_checkpoint(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else Path(self.run_dir) / "checkpoints" / "last.ckpt"

    def scene_qa_checkpoint(self) -> Path | None:
        if self.qa_checkpoint:
            return Path(self.qa_checkpoint)
        folder = Path(self.run_dir) / "qa"
        found = [p for p in folder.rglob("*") if p.suffix in (".ckpt", ".safetensors")] if folder.is_dir() else []
        for stem in ("qa", "last"):  # `fusion run` writes qa/qa.ckpt; a QA fit by hand leaves last.ckpt
            named = [p for p in found if p.stem == stem]
            if named:
                return max(named, key=lambda p: p.stat().st_mtime)
        return max(found, key=lambda p: p.stat().st_mtime) if found else None


class AppState:
    def __init__(self, config: AppConfig, browser: Browser | None = None, predictor=None, qa=None):
        """Parts passed in are used as they are (tests inject them); the others load from `config`."""
        self.config = config
        self.tmp = tempfile.mkdtemp(prefix="fusion-app-")
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        self._files: deque[str] = deque()
        self.browser, self.data_error = browser, None
        if browser is None:
            try:
                self.browser = Browser(config.dataroot, config.version)
            except DatasetError as e:
                self.data_error = (f"**No dataset:** {e}\n\nMake one with `make run` (or `.venv/bin/fusion synth "
                                   f"--out {config.dataroot}`), then restart the app.")  # fmt: skip
        self.predictor, self.model_message = predictor, ""
        if predictor is None and self.browser is not None:
            self.predictor, self.model_message = self._load_predictor()
        self.qa, self.qa_message = qa, ""
        if qa is None and self.browser is not None:
            self.qa, self.qa_message = self._load_qa()

    def _load_predictor(self):
        from fusion.app.predictor import CheckpointError, Predictor

        path = self.config.detector_checkpoint()
        if not path.is_file():
            return None, (f"No detector checkpoint at `{path}`: showing the data and annotations only. Train one "
                          "with `make run` (about 13 minutes on a laptop CPU; it writes "
                          "`outputs/latest/checkpoints/last.ckpt`), or pass `--checkpoint FILE`.")  # fmt: skip
        try:
            predictor = Predictor.from_checkpoint(path, self.config.dataroot, self.config.version, self.config.device,
                                                  self.config.cache_dir)  # fmt: skip
        except (CheckpointError, DatasetError) as e:
            return None, f"The detector could not be loaded: {e}"
        # The first forward pass is several times slower than the next ones: take it now, off the request path.
        first = self.browser.samples(self.browser.scenes()[0]["token"])[0]
        if predictor.knows(first):
            threading.Thread(target=predictor.predict, args=(first, "fused"), daemon=True).start()
        return predictor, f"Detector: `{path}`."

    def _load_qa(self):
        path = self.config.scene_qa_checkpoint()
        if path is None or not path.is_file():
            where = path or Path(self.config.run_dir) / "qa"
            return None, (f"No scene-QA checkpoint at `{where}`: `make run` trains one and leaves it in "
                          "`outputs/latest/qa/`; or pass `--qa-checkpoint FILE`.")  # fmt: skip
        try:
            from fusion.qa.api import SceneQA

            qa = SceneQA.from_checkpoint(str(path), self.config.dataroot, self.config.version, self.config.device)
        except Exception as e:  # an incompatible or broken checkpoint must not take the app down
            return None, f"The scene-QA model could not be loaded from `{path}`: {type(e).__name__}: {e}"
        return qa, f"Scene QA: `{path}`."

    def predictions(self, token: str, modality: str, threshold: float) -> Boxes3D | None:
        """The detector's boxes of a sample with score >= threshold, or None without a detector."""
        if self.predictor is None or not self.predictor.knows(token):
            return None
        boxes = Boxes3D.from_records(self.predictor.predict(token, modality))
        return boxes.select(boxes.scores >= threshold)

    def keep_file(self, path: str, keep: int = 32) -> str:
        """Track a file written under the temp folder; the oldest beyond `keep` are deleted (gradio has its copy)."""
        self._files.append(path)
        while len(self._files) > keep:
            old = self._files.popleft()
            if os.path.dirname(old) == self.tmp:
                Path(old).unlink(missing_ok=True)
        return path
