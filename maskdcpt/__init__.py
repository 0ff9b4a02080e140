"""maskdcpt: MaskDCPT universal image restoration pre-training (Hu et al., arXiv 2510.13282) as a pipeline.

The science lives here (degradations, data, models, losses, metrics, training, evaluation, inference) and is
importable without prefect, dvc or mlflow; the orchestration lives in :mod:`pipelines`.
"""

from maskdcpt.config import library_env_defaults as _library_env_defaults

__version__ = "0.1.0"

_library_env_defaults()
