"""AutoAugment's CIFAR-10 policy (Cubuk et al. 2018) for the training pipeline, with PIL.

sharp_darts.txt Table 2 trains its best models "with AutoAugment[4] and
Cosine Power Annealing". The policy is the 25 sub-policies the AutoAugment
paper reports for reduced CIFAR-10 (its appendix table; the transcription
of DeepVoltaire/AutoAugment `CIFAR10Policy`, which ahundt/sharpDARTS' own
`cnn/autoaugment.py` builds on, with that repository's issue #17 fix of
sub-policy 17). Each image draws one sub-policy uniformly; each of its two
operations is applied with its probability, at magnitude index m of 10
levels (ranges of the reference `SubPolicy`: e.g. rotate 0..30 degrees,
translate 0..150/331 of the width, shear 0..0.3, enhancement factors 1 +/-
0..0.9, posterize 8..4 bits, solarize threshold 256..0); the sign of signed
magnitudes is drawn with probability 1/2. Fill colour 128, as the reference.

The training transform (`AutoAugmentTransform`, config `data.autoaugment`)
does what the reference's CIFAR pipeline does before normalisation: random
crop with padding, horizontal flip, then the policy; the pipeline then
normalises and applies cutout. Random numbers come from the per-row seed
the pipeline gives, so a run is reproducible and resumable.

Needs Pillow (a dependency of jdarts, also used for ImageNet decoding).
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np

# (operation, probability, magnitude index) pairs; AutoAugment appendix, CIFAR-10.
CIFAR10_POLICY: Tuple[Tuple[Tuple[str, float, int], Tuple[str, float, int]], ...] = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translateX", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shearY", 0.5, 8), ("translateY", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shearY", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translateX", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translateY", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.8, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translateY", 0.9, 9), ("translateY", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translateY", 0.7, 9), ("autocontrast", 0.9, 1)),
)

RANGES = {
    "shearX": np.linspace(0, 0.3, 10), "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10), "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10), "color": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10)).astype(int),
    "solarize": np.linspace(256, 0, 10), "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10), "brightness": np.linspace(0.0, 0.9, 10),
    "autocontrast": np.zeros(10), "equalize": np.zeros(10), "invert": np.zeros(10),
}
FILL = 128


def draw(rng: np.random.Generator, policy=CIFAR10_POLICY) -> Tuple[int, List[Tuple[str, float, bool]]]:
  """The random choices for one image: (sub-policy index, [(op, magnitude, sign), ...]).

  Only the operations that fire are listed, in order; `sign` is True for +.
  """
  k = int(rng.integers(len(policy)))
  chosen = []
  for name, prob, level in policy[k]:
    fire = rng.random() < prob
    sign = rng.random() < 0.5
    if fire:
      chosen.append((name, float(RANGES[name][level]), bool(sign)))
  return k, chosen


def apply_op(img, name: str, magnitude: float, positive: bool):
  """One PIL operation on a PIL image (mode 'L' or 'RGB')."""
  from PIL import Image, ImageEnhance, ImageOps
  s = 1.0 if positive else -1.0
  fill = FILL if img.mode == "L" else (FILL,) * 3
  w, h = img.size
  if name in ("shearX", "shearY", "translateX", "translateY"):
    a = {"shearX": (1, magnitude * s, 0, 0, 1, 0), "shearY": (1, 0, 0, magnitude * s, 1, 0),
         "translateX": (1, 0, magnitude * w * s, 0, 1, 0),
         "translateY": (1, 0, 0, 0, 1, magnitude * h * s)}[name]
    resample = Image.BICUBIC if name.startswith("shear") else Image.NEAREST
    return img.transform(img.size, Image.AFFINE, a, resample, fillcolor=fill)
  if name == "rotate":
    return img.rotate(magnitude * s, fillcolor=fill)
  if name in ("color", "contrast", "sharpness", "brightness"):
    enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                "sharpness": ImageEnhance.Sharpness, "brightness": ImageEnhance.Brightness}
    return enhancer[name](img).enhance(1 + magnitude * s)
  if name == "posterize":
    return ImageOps.posterize(img, int(magnitude))
  if name == "solarize":
    return ImageOps.solarize(img, magnitude)
  if name == "autocontrast":
    return ImageOps.autocontrast(img)
  if name == "equalize":
    return ImageOps.equalize(img)
  if name == "invert":
    return ImageOps.invert(img)
  raise KeyError(f"unknown AutoAugment operation {name!r}; known: {', '.join(RANGES)}.")


def augment(image: np.ndarray, rng: np.random.Generator, policy=CIFAR10_POLICY) -> np.ndarray:
  """The policy on one uint8 (H, W, C) image, C in (1, 3)."""
  from PIL import Image
  _, chosen = draw(rng, policy)
  if not chosen:
    return image
  img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  for name, magnitude, positive in chosen:
    img = apply_op(img, name, magnitude, positive)
  out = np.asarray(img, np.uint8)
  return out[..., None] if image.shape[-1] == 1 else out


@dataclasses.dataclass(frozen=True)
class AutoAugmentTransform:
  """A pipeline `train_transform`: crop with padding, flip, then the CIFAR-10 policy.

  Called as `transform(images, seeds)` with uint8 (H, W, C) images (a list or
  an array) and one seed per image; returns uint8 (k, H, W, C).
  """
  crop_padding: int = 4
  flip: bool = True

  def __call__(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> np.ndarray:
    out = []
    p = self.crop_padding
    for image, seed in zip(images, seeds):
      rng = np.random.default_rng(int(seed))
      x = np.asarray(image, np.uint8)
      h, w = x.shape[:2]
      if p > 0:
        i, j = rng.integers(0, 2 * p + 1, size=2)
        x = np.pad(x, ((p, p), (p, p), (0, 0)))[i:i + h, j:j + w]
      if self.flip and rng.random() < 0.5:
        x = x[:, ::-1]
      out.append(augment(np.ascontiguousarray(x), rng))
    return np.stack(out)


__all__ = ["CIFAR10_POLICY", "RANGES", "draw", "apply_op", "augment", "AutoAugmentTransform"]
