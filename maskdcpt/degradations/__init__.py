"""Degradation registry for MaskDCPT-style universal image restoration.

Each degradation type is a :class:`Degradation` registered in :data:`REGISTRY` under its name. Images are
float32 ``(H, W, 3)`` RGB in [0, 1] (design.md §5). :func:`degrade` is the seeded entry point: the same
``(gt, name, seed)`` regenerates the same LQ bit for bit (see :mod:`maskdcpt.degradations.base`).

The 5D task (:data:`TASKS` ``["5d"]``) uses, in classifier-label order (the DCPT 5D config: derain,
denoise, dehaze, low-light, deblur):

====  ================  ==================================================================
idx   name              model
====  ================  ==================================================================
0     ``rain``          sparse seeds → line-kernel streaks → screen blend (:mod:`.rain`)
1     ``gaussian_noise``  ``clip(J + N(0, σ/255))``, σ ∈ {15, 25, 50} (:mod:`.noise`)
2     ``haze``          ``J·t + A(1 − t)``, ``t = exp(−β·d)``, pseudo-depth (:mod:`.haze`)
3     ``low_light``     ``k·J^γ`` + Poisson-Gaussian noise (:mod:`.lowlight`)
4     ``motion_blur``   linear motion kernel, 7-35 px, ``cv2.filter2D`` (:mod:`.blur`)
====  ================  ==================================================================

To add a type: subclass :class:`Degradation`, implement ``sample_params`` and ``apply``, and
:func:`register` an instance; add it to a task list to give it a class index.
"""

from __future__ import annotations

from .base import (
    KINDS,
    REGISTRY,
    Degradation,
    check_image,
    degrade,
    get_degradation,
    list_degradations,
    register,
    seed_streams,
)
from .blur import MotionBlur, motion_kernel
from .haze import Haze, pseudo_depth, transmission
from .lowlight import LowLight, darken
from .noise import GaussianNoise
from .rain import Rain, rain_layer

__all__ = [
    "Degradation",
    "REGISTRY",
    "TASKS",
    "KINDS",
    "register",
    "get_degradation",
    "list_degradations",
    "degrade",
    "seed_streams",
    "check_image",
    "task_classes",
    "GaussianNoise",
    "Rain",
    "Haze",
    "MotionBlur",
    "LowLight",
    "motion_kernel",
    "rain_layer",
    "pseudo_depth",
    "transmission",
    "darken",
]

for _deg in (Rain(), GaussianNoise(), Haze(), LowLight(), MotionBlur()):
    register(_deg, replace=True)
del _deg

#: Task name → ordered degradation names; the position is the classifier's class index.
TASKS: dict[str, list[str]] = {
    "5d": ["rain", "gaussian_noise", "haze", "low_light", "motion_blur"],
}


def task_classes(task: str) -> list[str]:
    """The ordered class list of ``task`` (``ValueError`` listing known tasks if unknown)."""
    try:
        return list(TASKS[task])
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}") from None
