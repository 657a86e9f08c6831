"""Evaluation: nuScenes detection metrics equal to the devkit's, AP at BEV/3D IoU, tables and plots.

`evaluate(dataroot, version, split, results, out_dir=...)` is the entry point; `fusion evaluate` wraps it.
"""

from fusion.evaluation.errors import EvaluationError, GroundTruthError, ResultsError
from fusion.evaluation.evaluate import Evaluation, evaluate, run_evaluation

__all__ = ["Evaluation", "EvaluationError", "GroundTruthError", "ResultsError", "evaluate", "run_evaluation"]
