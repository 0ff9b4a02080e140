"""The registry of supported public test sets: one :class:`TestSetSpec` per set in :data:`DATASETS`, with its
task class, default folder and layout (the layouts are described in :mod:`maskdcpt.data.testsets`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from maskdcpt.imageio import IMAGE_EXTENSIONS

REJECTION_COLUMNS = ["dataset", "id", "lq_path", "gt_path", "reason", "detail"]
_EXTS = {e.lower() for e in IMAGE_EXTENSIONS}
_GT_ONLY_SUBDIRS = ("original_png", "original", "HR", "GT", "gt")


class TestSetMissing(FileNotFoundError):
    """A test set is absent or laid out differently: the message names the path and prints the expected
    tree (:func:`expected_layout`)."""

    __test__ = False   # a "Test..." name that pytest must not collect


@dataclass(frozen=True)
class TestSetPair:
    """One test pair: ``id`` (str, unique in the set), ``lq`` and ``gt`` float32 ``(H, W, 3)`` RGB in [0, 1]."""

    id: str
    lq: np.ndarray
    gt: np.ndarray

    def __iter__(self):  # allows ``for id, lq, gt in pairs``
        return iter((self.id, self.lq, self.gt))


@dataclass(frozen=True)
class TestSetSpec:
    """A registered test set.

    Attributes:
        name: key in :data:`DATASETS` (``rain100l``...).
        title: the paper's name (``Rain100L``).
        classes: ``{"5d": class, "12d": class}``: the task class the set scores (a task missing = not used).
        layout: loader kind (module docstring): ``pairs_by_number``, ``sots``, ``gopro``, ``pairs_by_stem``,
            ``list_file``, ``gt_only``.
        default_dir: folder below ``test_sets.root``.
        options: loader options (subfolder names, affixes, ``synth`` spec for ``gt_only``).
        comparable: False when the LQ cannot equal the official one (numbers not comparable with the paper).
    """

    name: str
    title: str
    classes: Mapping[str, str]
    layout: str
    default_dir: str
    options: Mapping[str, Any] = field(default_factory=dict)
    comparable: bool = True


def _noise(sigma: int) -> dict:
    return {"type": "gaussian_noise", "sigma": sigma}


def _build_registry() -> dict[str, TestSetSpec]:
    R: dict[str, TestSetSpec] = {}

    def add(spec: TestSetSpec) -> None:
        R[spec.name] = spec

    rain_opts = {"lq_dir": "rainy", "gt_dir": "norain"}
    add(TestSetSpec("rain100l", "Rain100L", {"5d": "rain", "12d": "rain"}, "pairs_by_number", "Rain100L", rain_opts))
    add(TestSetSpec("rain100h", "Rain100H", {"12d": "rain"}, "pairs_by_number", "Rain100H", rain_opts))
    add(TestSetSpec("sots_outdoor", "SOTS-outdoor", {"5d": "haze", "12d": "haze"}, "sots", "SOTS/outdoor",
                      {"lq_dir": "hazy", "gt_dir": "clear"}))
    add(TestSetSpec("gopro", "GoPro", {"5d": "motion_blur", "12d": "motion_blur"}, "gopro", "GoPro/test",
                      {"lq_dir": "blur", "gt_dir": "sharp"}))
    add(TestSetSpec("lol_v1", "LOL-v1", {"5d": "low_light", "12d": "low_light"}, "pairs_by_stem", "LOL",
                      {"lq_dir": "eval15/low", "gt_dir": "eval15/high"}))
    add(TestSetSpec("snow100k_l", "Snow100K-L", {"12d": "snow"}, "pairs_by_stem", "Snow100K-L",
                      {"lq_dir": "synthetic", "gt_dir": "gt"}))
    add(TestSetSpec("raindrop_a", "RainDrop test_a", {"12d": "raindrop"}, "pairs_by_stem", "RainDrop/test_a",
                      {"lq_dir": "data", "gt_dir": "gt", "lq_suffix": "_rain", "gt_suffix": "_clean"}))
    add(TestSetSpec("lol_v2_real", "LOL-v2 real", {"12d": "low_light"}, "pairs_by_stem", "LOL-v2",
                      {"lq_dir": "Real_captured/Test/Low", "gt_dir": "Real_captured/Test/Normal",
                       "lq_prefix": "low", "gt_prefix": "normal"}))
    add(TestSetSpec("lol_v2_syn", "LOL-v2 synthetic", {"12d": "low_light"}, "pairs_by_stem", "LOL-v2",
                      {"lq_dir": "Synthetic/Test/Low", "gt_dir": "Synthetic/Test/Normal"}))
    add(TestSetSpec("hide", "HIDE", {"12d": "motion_blur"}, "pairs_by_stem", "HIDE",
                      {"lq_dir": "test", "gt_dir": "GT", "flatten": True}))
    add(TestSetSpec("realblur_j", "RealBlur-J", {"12d": "motion_blur"}, "list_file", "RealBlur",
                      {"list": "RealBlur_J_test_list.txt"}))
    add(TestSetSpec("dpdd", "DPDD (inputC)", {"12d": "defocus_blur"}, "pairs_by_stem", "DPDD",
                      {"lq_dir": "test_c/source", "gt_dir": "test_c/target"}))
    add(TestSetSpec("sidd", "SIDD val", {"12d": "real_noise"}, "pairs_by_stem", "SIDD/val",
                      {"lq_dir": "noisy", "gt_dir": "gt"}))
    add(TestSetSpec("moire", "Moiré (RDNet test)", {"12d": "moire"}, "pairs_by_stem", "moire/test",
                      {"lq_dir": "moire", "gt_dir": "gt"}))
    for key, title, folder in (("cbsd68", "CBSD68", "CBSD68"), ("kodak", "Kodak24", "Kodak24"),
                               ("urban100", "Urban100", "Urban100")):
        for s in (15, 25, 50, 60, 75):
            name = "cbsd68" if (key, s) == ("cbsd68", 25) else f"{key}_s{s}"
            classes = {"5d": "gaussian_noise", "12d": "noise"} if s <= 50 else {"ood": "gaussian_noise"}
            add(TestSetSpec(name, f"{title} σ{s}", classes, "gt_only", folder, {"synth": _noise(s)}))
        add(TestSetSpec(f"{key}_jpeg50", f"{title} JPEG q50", {"12d": "jpeg"}, "gt_only", folder,
                          {"synth": {"type": "jpeg", "quality": 50}}))
    add(TestSetSpec("urban100_demosaic", "Urban100 demosaic", {"12d": "mosaic"}, "gt_only", "Urban100",
                      {"synth": {"type": "mosaic", "swap_rb": False}}))
    add(TestSetSpec("urban100_gblur", "Urban100 Gaussian blur", {"12d": "gaussian_blur"}, "gt_only", "Urban100",
                      {"synth": {"type": "gaussian_blur"}}, comparable=False))
    return R


#: name → :class:`TestSetSpec` of every supported set.
DATASETS: dict[str, TestSetSpec] = _build_registry()
