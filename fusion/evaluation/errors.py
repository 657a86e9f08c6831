"""Errors of the evaluation: each message names the file, and the sample token and field where there is one."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Bad input to `fusion evaluate`; nothing has been written when it is raised."""


class ResultsError(EvaluationError):
    """A results JSON (or in-memory results dict) that is not a valid nuScenes detection submission.

    Attributes:
        source: The file (or `<memory>`).
        sample_token: The sample concerned, if any.
        field: The field concerned (e.g. `results[<token>][3].size`), if any.
    """

    def __init__(self, source: str, message: str, sample_token: str | None = None, field: str | None = None):
        where = source
        if sample_token is not None:
            where += f": sample {sample_token}"
        if field is not None:
            where += f": field {field}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.sample_token = sample_token
        self.field = field


class GroundTruthError(EvaluationError):
    """A dataroot, version or split that cannot give ground truth for the evaluation."""
