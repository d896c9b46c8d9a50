"""onbrand: align an open LLM to a brand from human preference data."""

import os

__version__ = "0.1.0"


def isolate_child_interpreters() -> None:
    """Start every Python child of this process with ``PYTHONSAFEPATH=1``, whatever the caller's
    environment. From a checkout's root, a child interpreter started with ``-m`` or ``-c`` puts the
    working directory first on ``sys.path``, where the repository's ``kernels/``, ``data/``,
    ``eval/`` and ``training/`` hide the PyPI packages of those names: vLLM's model-registry probe
    (``python -m vllm.model_executor.models.registry``, run when its model-info cache is cold) then
    failed inside transformers' check for the Hub ``kernels`` package. The children we start
    ourselves also get ``-P``; this covers the ones libraries start."""
    os.environ["PYTHONSAFEPATH"] = "1"
