"""fusion app: browse a nuScenes dataroot (the synthetic world by default) with the detector's boxes against the
annotations, the run's metrics, and a scene-QA chat. Hugging Face Spaces convention: the app lives in `fusion.app`.

    python app.py [--port 7860] [--host 127.0.0.1] [--dataroot data/synthetic] [--version v1.0-mini]
                  [--run outputs/latest] [--checkpoint CKPT] [--qa-checkpoint CKPT]

Binds to 127.0.0.1 unless told otherwise. Only files named by the dataset's tables are read; gradio may serve files
from the app's own temporary folder only. API: `ask` (sample token, question) -> answer text first.
"""

from __future__ import annotations

import sys

from fusion.app.server import main

if __name__ == "__main__":
    sys.exit(main())
