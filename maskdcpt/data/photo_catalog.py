"""The catalogue of real photos that installed pip packages ship (docs/photos.md): which files are used, their
licences, the fixed benchmark/training split, the real degraded photos without ground truth, and the files that
are deliberately left out. Data only; :mod:`maskdcpt.data.photos` collects and prepares them."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class PackagedPhoto:
    """One photo file shipped inside a pip package.

    ``package`` is the import name (folder), ``rel_path`` the path inside that folder (POSIX separators),
    ``split`` ``'train'`` or ``'benchmark'``, ``grey`` whether the file is a single-channel photo.
    """

    image_id: str
    package: str
    rel_path: str
    licence: str
    split: str
    grey: bool = False
    description: str = ""


#: pip distribution name for each import name (used for ``importlib.metadata.version``).
DISTRIBUTIONS = {
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "mahotas": "mahotas",
    "sporco": "sporco",
}

_SK = "skimage"
_CC0 = "CC0-1.0"

#: The real photographs taken from installed packages (see the module docstring for the split rule).
PACKAGED_PHOTOS: tuple[PackagedPhoto, ...] = (
    # ---- benchmark: 9 classic photos -----------------------------------------------------------------
    PackagedPhoto("sporco-kodim23", "sporco", "data/kodim23.png",
                  "Kodak PhotoCD image, released for unrestricted use (sporco data/README.rst)", "benchmark",
                  description="Kodak kodim23, parrots, 768x512"),
    PackagedPhoto("sporco-monarch", "sporco", "data/monarch.png",
                  "Waterloo BragZone, free of copyright restrictions (sporco data/README.rst)", "benchmark",
                  description="monarch butterfly, 768x512"),
    PackagedPhoto("sporco-sail", "sporco", "data/sail.png",
                  "Waterloo BragZone, free of copyright restrictions (sporco data/README.rst)", "benchmark",
                  description="sailboats, 768x512"),
    PackagedPhoto("sporco-tulips", "sporco", "data/tulips.png",
                  "Waterloo BragZone, free of copyright restrictions (sporco data/README.rst)", "benchmark",
                  description="tulips, 768x512"),
    PackagedPhoto("sporco-barbara", "sporco", "data/barbara.png",
                  "believed public domain, attributed to Allen Gersho (sporco data/README.rst)", "benchmark",
                  description="barbara, 702x574"),
    PackagedPhoto("skimage-astronaut", _SK, "data/astronaut.png",
                  "public domain (NASA; skimage.data.astronaut docstring)", "benchmark",
                  description="astronaut Eileen Collins, 512x512"),
    PackagedPhoto("skimage-chelsea", _SK, "data/chelsea.png",
                  f"{_CC0} (Stefan van der Walt; skimage.data.chelsea docstring)", "benchmark",
                  description="Chelsea the cat, 451x300"),
    PackagedPhoto("skimage-coffee", _SK, "data/coffee.png",
                  f"{_CC0} (Rachel Michetti; skimage.data.coffee docstring)", "benchmark",
                  description="coffee cup, 600x400"),
    PackagedPhoto("skimage-camera", _SK, "data/camera.png",
                  f"{_CC0} (Lav Varshney; skimage.data.camera docstring)", "benchmark", grey=True,
                  description="cameraman replacement, grey, 512x512"),
    # ---- training pool --------------------------------------------------------------------------------
    PackagedPhoto("skimage-rocket", _SK, "data/rocket.jpg",
                  "public domain (SpaceX; skimage.data.rocket docstring)", "train",
                  description="Falcon 9 launch, 640x427"),
    PackagedPhoto("skimage-motorcycle_left", _SK, "data/motorcycle_left.png",
                  "Middlebury stereo 2014 (Scharstein et al.), redistributed in scikit-image (BSD-3)", "train",
                  description="stereo left view, 741x500"),
    PackagedPhoto("skimage-motorcycle_right", _SK, "data/motorcycle_right.png",
                  "Middlebury stereo 2014 (Scharstein et al.), redistributed in scikit-image (BSD-3)", "train",
                  description="stereo right view, 741x500"),
    PackagedPhoto("skimage-hubble_deep_field", _SK, "data/hubble_deep_field.jpg",
                  "public domain (NASA; skimage.data.hubble_deep_field docstring)", "train",
                  description="Hubble deep field, 1000x872"),
    PackagedPhoto("skimage-retina", _SK, "data/retina.jpg",
                  f"{_CC0} (Mikael Häggström; skimage.data.retina docstring)", "train",
                  description="fundus photograph, 1411x1411"),
    PackagedPhoto("skimage-moon", _SK, "data/moon.png",
                  "scikit-image sample data (BSD-3 package; no separate note)", "train", grey=True,
                  description="lunar surface, grey, 512x512"),
    PackagedPhoto("skimage-coins", _SK, "data/coins.png",
                  "no known copyright restrictions (Brooklyn Museum; skimage.data.coins docstring)", "train",
                  grey=True, description="Greek coins, grey, 384x303"),
    PackagedPhoto("skimage-brick", _SK, "data/brick.png",
                  f"{_CC0} (CC0Textures; skimage.data.brick docstring)", "train", grey=True,
                  description="brick wall texture, grey, 512x512"),
    PackagedPhoto("skimage-grass", _SK, "data/grass.png",
                  f"{_CC0} (CC0Textures; skimage.data.grass docstring)", "train", grey=True,
                  description="grass texture, grey, 512x512"),
    PackagedPhoto("skimage-gravel", _SK, "data/gravel.png",
                  f"{_CC0} (CC0Textures; skimage.data.gravel docstring)", "train", grey=True,
                  description="gravel texture, grey, 512x512"),
    PackagedPhoto("sklearn-china", "sklearn", "datasets/images/china.jpg",
                  "CC-BY-2.0, danielbuechele on Flickr (sklearn datasets/images/README.txt)", "train",
                  description="Chinese temple, 640x427"),
    PackagedPhoto("sklearn-flower", "sklearn", "datasets/images/flower.jpg",
                  "CC-BY-2.0, vultilion on Flickr (sklearn datasets/images/README.txt)", "train",
                  description="flower, 640x427"),
    PackagedPhoto("matplotlib-grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                  "public domain (US Navy photograph)", "train",
                  description="Grace Hopper portrait, 512x600"),
    PackagedPhoto("mahotas-luispedro", "mahotas", "demos/data/luispedro.jpg",
                  "MIT (mahotas demo data; portrait of the package author)", "train",
                  description="portrait, 300x377"),
)

#: image_ids of the held-out benchmark split (the fixed 9-photo rule).
BENCHMARK_IMAGE_IDS: tuple[str, ...] = tuple(p.image_id for p in PACKAGED_PHOTOS if p.split == "benchmark")

#: Real degraded photos without ground truth: for qualitative / no-reference evaluation only.
REAL_DEGRADED_PHOTOS: tuple[dict, ...] = (
    {
        "image_id": "skimage-clock_motion",
        "package": _SK,
        "rel_path": "data/clock_motion.png",
        "degradation": "motion_blur",
        "licence": "public domain (Stefan van der Walt; skimage.data.clock docstring)",
        "description": "wall clock photographed while moving the camera horizontally, grey, 400x300",
    },
)

#: Image files present in the packages that are deliberately not used, with the reason.
EXCLUDED_PACKAGED_FILES: dict[str, str] = {
    "skimage/data/clock_motion.png": "real motion blur without ground truth (see REAL_DEGRADED_PHOTOS)",
    "skimage/data/text.png": "scanned text, not a natural photo",
    "skimage/data/page.png": "scanned page, not a natural photo",
    "skimage/data/horse.png": "binary silhouette",
    "skimage/data/chessboard_GRAY.png": "synthetic pattern",
    "skimage/data/chessboard_RGB.png": "synthetic pattern",
    "skimage/data/logo.png": "rendered logo",
    "skimage/data/phantom.png": "synthetic Shepp-Logan phantom",
    "skimage/data/color.png": "rendered colour wheel",
    "skimage/data/cell.png": "microscopy",
    "skimage/data/ihc.png": "microscopy (immunohistochemistry)",
    "skimage/data/microaneurysms.png": "tiny 102x102 retina crop",
    "skimage/data/lfw_subset.npy": "25x25 face thumbnails",
    "skimage/data/multipage.tif": "tiny test file",
    "skimage/data/multipage_rgb.tif": "tiny test file",
    "skimage/data/no_time_for_that_tiny.gif": "tiny animation",
    "mahotas/demos/data/lena.jpg": "never used (lena)",
    "mahotas/demos/data/DepartmentStore.jpg": "scanned 'Where's Wally' illustration, not a photo; third-party artwork",
    "mahotas/demos/data/nuclear.png": "fluorescence microscopy",
}
