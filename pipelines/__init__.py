"""The orchestration of maskdcpt: DVC stages (:mod:`pipelines.stages`), Prefect flows, MLflow tracking and
registry, Great Expectations suites and the typed params schema (:mod:`pipelines.params`).

Importing the package applies the stack's offline environment defaults (:mod:`pipelines.env`).
"""

from pipelines.env import apply_env_defaults as _apply_env_defaults

_apply_env_defaults()
