"""Degradation registry for MaskDCPT-style universal image restoration.

Each degradation type is a :class:`Degradation` registered in :data:`REGISTRY` under its name, with a
``kind``: ``'single'`` (one synthetic degradation), ``'mixed'`` (a sequential composition, :mod:`.mixed`) or
``'real'`` (captured pairs only, :mod:`.real`; ``apply`` raises :class:`RealPairsOnly`). Images are float32
``(H, W, 3)`` RGB in [0, 1] (docs/method.md §8). :func:`degrade` is the seeded entry point: the same
``(gt, name, seed)``, or a manifest row's ``(seed, params)``, regenerates the same LQ bit for bit
(:mod:`maskdcpt.degradations.base`).

Tasks (:data:`TASKS`; the position in a list is the classifier's class index)
----------------------------------------------------------------------------
``"5d"`` (DCPT 5D config order: derain, denoise, dehaze, low-light, deblur)
    ``rain, gaussian_noise, haze, low_light, motion_blur``.
``"12d"`` (13 classes, the paper's repetition groups ``[GN, RN, MB, DB, GB, J, H, RS, RD, S, MS, LL, MR]``,
docs/method.md §1.5, §3.1)
    ``noise, real_noise, motion_blur, defocus_blur, gaussian_blur, jpeg, haze, rain, raindrop, snow, mosaic,
    low_light, moire``.
``"all"`` (the paper's 19 UIR-2.5M types = 14 single + 5 mixed, docs/method.md §4.1)
    the 12D list, then ``rain_raindrop`` (RSD), then the mixtures ``blur_jpeg, blur_rain,
    blur_lowlight_noise, lowlight_haze_rain_snow, second_order``.

Noise decision: the paper's GN class merges Gaussian, Poisson and salt & pepper noise, so 12d/all use one
class ``noise`` with the sub-type recorded in ``params["noise_type"]`` (:class:`Noise`); the 5D task keeps
``gaussian_noise`` (σ ∈ {15, 25, 50}, the 5D training set), which is ``noise`` restricted to three
Gaussian levels. Other registered entries (``real_rain``, ``real_motion_blur``, ``real_low_light``) can be
used in custom class lists (params.yaml ``task.classes``).

``param_ranges`` notation: ``[lo, hi]`` continuous uniform; ``{"grid": [lo, hi, step]}`` a discrete grid
sampled uniformly (the severity levels); ``{"choice": [...], "p": [...]}`` a discrete choice; a bare value
is fixed.

Level counting rule (``Degradation.levels``)
--------------------------------------------
Each synthetic type draws its *severity* parameter(s) from a documented discrete grid; ``levels`` is the
number of distinct severity settings: grid sizes multiply for jointly drawn severities, add up over
alternative sub-types (noise types, kernel families), and mixtures multiply their steps' levels.
Nuisance parameters (angles, orientations, positions, trajectory/field seeds, secondary shape parameters)
are continuous and not counted. Real classes have ``levels = 0``. :func:`level_summary` prints the table;
the single synthetic types of the registry sum to 405 (402 over the 12d/all classes) (``gaussian_noise`` 3, ``noise`` 120, ``motion_blur`` 58,
``defocus_blur`` 15, ``gaussian_blur`` 56, ``jpeg`` 86, ``haze`` 13, ``rain`` 9, ``raindrop`` 11, ``snow``
10, ``mosaic`` 1, ``low_light`` 13, ``moire`` 10): the paper's "200+ levels". Mixtures are combinations and
are reported separately.

To add a type: subclass :class:`Degradation`, implement ``sample_params`` and ``apply``, :func:`register`
an instance, and add it to a task list to give it a class index.
"""

from __future__ import annotations

from .base import (
    KINDS,
    REGISTRY,
    Degradation,
    RealPairsOnly,
    check_image,
    degrade,
    get_degradation,
    list_degradations,
    register,
    seed_streams,
)
from .blur import DefocusBlur, MotionBlur, disk_kernel, motion_kernel, shake_kernel
from .camera import JPEG, Moire, Mosaic, bayer_rggb, demosaic, jpeg_roundtrip
from .haze import Haze, pseudo_depth, transmission
from .kernels import GaussianSincBlur, bivariate_kernel, sinc_kernel
from .lowlight import LowLight, darken
from .mixed import Mixture, Resize, SecondOrder
from .noise import GaussianNoise, Noise, poisson_noise, salt_pepper_noise
from .rain import Rain, rain_layer
from .real import REAL_CLASSES, RealPairs
from .weather import Raindrop, Snow

__all__ = [
    "Degradation", "REGISTRY", "TASKS", "KINDS", "RealPairsOnly", "register", "get_degradation",
    "list_degradations", "degrade", "seed_streams", "check_image", "task_classes", "level_summary",
    "GaussianNoise", "Noise", "Rain", "Haze", "MotionBlur", "DefocusBlur", "GaussianSincBlur", "JPEG",
    "Mosaic", "Moire", "Raindrop", "Snow", "LowLight", "Mixture", "SecondOrder", "Resize", "RealPairs",
    "motion_kernel", "shake_kernel", "disk_kernel", "bivariate_kernel", "sinc_kernel", "rain_layer",
    "pseudo_depth", "transmission", "darken", "poisson_noise", "salt_pepper_noise", "jpeg_roundtrip",
    "bayer_rggb", "demosaic",
]


def _build() -> None:
    singles = [Rain(), GaussianNoise(), Haze(), LowLight(), MotionBlur(), Noise(), DefocusBlur(),
               GaussianSincBlur(), JPEG(), Raindrop(), Snow(), Mosaic(), Moire()]
    for deg in singles:
        register(deg, replace=True)
    for name, datasets in REAL_CLASSES.items():
        register(RealPairs(name, datasets), replace=True)
    r = REGISTRY
    mixtures = [
        Mixture("rain_raindrop", [("rain", r["rain"]), ("raindrop", r["raindrop"])],
                doc="rain streaks then raindrops (RSD, RainDS)", source="UIR-2.5M RSD row (RainDS)"),
        Mixture("blur_jpeg", [("motion_blur", r["motion_blur"]), ("jpeg", r["jpeg"])],
                doc="motion blur then JPEG (REDS / RealBlur-J)", source="UIR-2.5M Blur+JPEG row"),
        Mixture("blur_rain", [("rain", r["rain"]), ("motion_blur", r["motion_blur"])],
                doc="rain streaks then camera motion blur of the whole scene (RainDrop-Clarity)",
                source="UIR-2.5M Blur+Rain row"),
        Mixture("blur_lowlight_noise", [("motion_blur", r["motion_blur"]), ("low_light", r["low_light"]),
                                        ("noise", r["noise"], {"noise_type": "gaussian"})],
                doc="motion blur, low light (with shot noise), then Gaussian noise (LoL-Blur)",
                source="UIR-2.5M Blur+Low-light+Noise row (LoL-Blur)"),
        Mixture("lowlight_haze_rain_snow", [("haze", r["haze"]), ("rain", r["rain"]), ("snow", r["snow"]),
                                            ("low_light", r["low_light"])],
                doc="haze, rain streaks, snow, then low light (CDD)", source="UIR-2.5M CDD row"),
        SecondOrder("second_order", r["gaussian_blur"], Noise(("gaussian", "poisson"), (0.5, 0.5)), r["jpeg"],
                    doc="Real-ESRGAN-like two rounds of blur, down-sample, noise, JPEG, resized back",
                    source="UIR-2.5M DownSample+Noise+Blur+JPEG row; Real-ESRGAN (Wang et al. ICCVW 2021)"),
    ]
    # The 'blur_lowlight_noise' noise step is Gaussian only: count its 50 σ levels, not all 120.
    mixtures[3].levels = r["motion_blur"].levels * r["low_light"].levels * 50
    for m in mixtures:
        register(m, replace=True)


_build()

_TWELVE_D = ["noise", "real_noise", "motion_blur", "defocus_blur", "gaussian_blur", "jpeg", "haze", "rain",
             "raindrop", "snow", "mosaic", "low_light", "moire"]

#: Task name → ordered degradation names; the position is the classifier's class index.
TASKS: dict[str, list[str]] = {
    "5d": ["rain", "gaussian_noise", "haze", "low_light", "motion_blur"],
    "12d": list(_TWELVE_D),
    "all": _TWELVE_D + ["rain_raindrop", "blur_jpeg", "blur_rain", "blur_lowlight_noise",
                        "lowlight_haze_rain_snow", "second_order"],
}


def task_classes(task: str) -> list[str]:
    """The ordered class list of ``task`` (``ValueError`` listing known tasks if unknown)."""
    try:
        return list(TASKS[task])
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}") from None


def level_summary(names: list[str] | None = None) -> dict:
    """``{"per_type": {name: levels}, "single_total": int, "mixed": {name: levels}}`` over ``names``
    (default: the whole registry); ``single_total`` sums the ``kind == 'single'`` types (the 200+ count)."""
    names = sorted(REGISTRY) if names is None else list(names)
    per = {n: int(get_degradation(n).levels) for n in names}
    return {"per_type": per,
            "single_total": sum(v for n, v in per.items() if REGISTRY[n].kind == "single"),
            "mixed": {n: v for n, v in per.items() if REGISTRY[n].kind == "mixed"}}
