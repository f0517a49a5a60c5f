"""ImageNet (ILSVRC 2012) for the mobile-setting evaluation (paper A.2.3).

Records come from tensorflow-datasets' `imagenet2012` through
`tfds.data_source` (array_record files, no TensorFlow): tfds decodes each
JPEG to a uint8 (h, w, 3) array with OpenCV or PIL. Images differ in size, so
the dataset's `DatasetInfo` carries its own transforms, which the grain
pipelines (`jdarts.data.pipeline`) apply per image:

* training (`InceptionCrop`, the reference `cnn/train_imagenet.py`):
  RandomResizedCrop(224) (area 8%-100% of the image, aspect ratio 3/4-4/3,
  bilinear), RandomHorizontalFlip, ColorJitter(brightness=0.4, contrast=0.4,
  saturation=0.4, hue=0.2) in a random order per image, as torchvision's PIL
  code paths compute them;
* evaluation (`ResizeCenterCrop`): shorter side resized to 256, the central
  224 x 224;

then both normalise with the ImageNet mean/std. Every random number of an
image comes from a generator seeded by the pipeline (a function of the run's
seed, the step and the row), so batches are reproducible and checkpointable.

Preparing the data needs the manual download (see `load_imagenet`); PIL is
imported only when a transform runs.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

from jdarts.data import sources
from jdarts.data import tfds_source
from jdarts.data.errors import DataError

IMAGENET_TFDS_NAME = "imagenet2012"
# torchvision.transforms.Normalize values of the reference train_imagenet.py.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Tuple[float, float] = (0.08, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> Tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params with numpy's generator.

  Up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect
  ratio (w / h) in `ratio`; a box that fits is placed uniformly. Otherwise the
  largest central box whose ratio is clipped into `ratio`.

  Args:
    rng: the image's generator.
    height, width: image size.
    scale: bounds of the crop's area as a fraction of the image's.
    ratio: bounds of the crop's width / height.

  Returns:
    (top, left, h, w) of the crop, inside the image.
  """
  area = height * width
  log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _to_pil(image: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:  # a few ImageNet JPEGs are grayscale
    image = np.repeat(image, 3, axis=-1)
  return Image.fromarray(np.ascontiguousarray(image[..., :3]), "RGB")


def adjust_hue(img, hue_factor: float):
  """torchvision's PIL adjust_hue: rotates the HSV hue channel by hue_factor turns."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, s, v = img.convert("HSV").split()
  shift = int(hue_factor * 255) % 256  # the uint8 wrap-around of the reference
  np_h = (np.asarray(h, np.uint8).astype(np.int32) + shift) % 256
  h = Image.fromarray(np_h.astype(np.uint8), "L")
  return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float, hue: float):
  """torchvision's ColorJitter on a PIL image: four factors, applied in random order.

  Factors: brightness, contrast, saturation ~ U[max(0, 1 - x), 1 + x] (blends
  with black, the mean gray, the grayscale image: PIL ImageEnhance), hue ~
  U[-hue, hue]. A zero strength skips that adjustment.
  """
  from PIL import ImageEnhance  # pylint: disable=g-import-not-at-top
  order = rng.permutation(4)
  factors = [rng.uniform(max(0.0, 1 - x), 1 + x) for x in (brightness, contrast, saturation)]
  factors.append(rng.uniform(-hue, hue))
  for k in order.tolist():
    if k == 0 and brightness > 0:
      img = ImageEnhance.Brightness(img).enhance(factors[0])
    elif k == 1 and contrast > 0:
      img = ImageEnhance.Contrast(img).enhance(factors[1])
    elif k == 2 and saturation > 0:
      img = ImageEnhance.Color(img).enhance(factors[2])
    elif k == 3 and hue > 0:
      img = adjust_hue(img, factors[3])
  return img


@dataclasses.dataclass(frozen=True)
class InceptionCrop:
  """Training transform: random resized crop, flip, colour jitter (reference ImageNet).

  Call: `(images, seeds) -> uint8 (k, size, size, 3)`, images a sequence of k
  uint8 (h_i, w_i, 3) arrays, seeds k ints.
  """
  size: int = 224
  scale: Tuple[float, float] = (0.08, 1.0)
  ratio: Tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.2

  def one(self, image: np.ndarray, seed: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(int(seed))
    img = _to_pil(image)
    top, left, h, w = random_resized_crop_box(rng, img.height, img.width, self.scale,
                                              self.ratio)
    # Crop, then resize: torchvision's order (a resize `box` would read
    # pixels outside the crop at its borders).
    img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size),
                                                         Image.BILINEAR)
    if self.flip and rng.random() < 0.5:
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if self.brightness or self.contrast or self.saturation or self.hue:
      img = color_jitter(img, rng, self.brightness, self.contrast, self.saturation,
                         self.hue)
    return np.asarray(img, np.uint8)

  def __call__(self, images: Sequence[np.ndarray], seeds: Sequence[int]) -> np.ndarray:
    out = np.empty((len(images), self.size, self.size, 3), np.uint8)
    for r, (image, seed) in enumerate(zip(images, seeds)):
      out[r] = self.one(image, seed)
    return out


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop:
  """Evaluation transform: shorter side to `resize` (bilinear), central `size` crop.

  torchvision's Resize(256) + CenterCrop(224): the longer side becomes
  int(resize * long / short); the crop starts at round((side - size) / 2).
  """
  resize: int = 256
  size: int = 224

  def one(self, image: np.ndarray) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    img = _to_pil(image)
    w, h = img.size
    if w <= h:
      new_w, new_h = self.resize, int(self.resize * h / w)
    else:
      new_w, new_h = int(self.resize * w / h), self.resize
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - self.size) / 2.0))
    left = int(round((new_w - self.size) / 2.0))
    return np.asarray(img.crop((left, top, left + self.size, top + self.size)), np.uint8)

  def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
    out = np.empty((len(images), self.size, self.size, 3), np.uint8)
    for r, image in enumerate(images):
      out[r] = self.one(image)
    return out


def imagenet_info(size: int = 224, resize: int = 256, *, color_jitter_strength: float = 0.4,
                  hue: float = 0.2, name: str = "imagenet2012") -> sources.DatasetInfo:
  """The `DatasetInfo` of ImageNet at `size` x `size` (tests use small sizes)."""
  return sources.DatasetInfo(
      name=name, image_shape=(size, size, 3), num_classes=1000,
      mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_padding=0, flip=True,
      train_transform=InceptionCrop(size, brightness=color_jitter_strength,
                                    contrast=color_jitter_strength,
                                    saturation=color_jitter_strength, hue=hue),
      eval_transform=ResizeCenterCrop(resize, size))


IMAGENET_INFO = imagenet_info()

MANUAL_DOWNLOAD = ("ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (register at "
                   "https://image-net.org/download-images)")


def load_imagenet(split: str, data_dir: Optional[str] = None):
  """A split ('train' or 'validation') of tfds `imagenet2012`, decoded to uint8 arrays.

  ImageNet is a manual download: put ILSVRC2012_img_train.tar and
  ILSVRC2012_img_val.tar in `DATA_DIR/downloads/manual/`, then run (once,
  with TensorFlow installed) `tfds build imagenet2012 --data_dir=DATA_DIR
  --file_format=array_record`; train with `--config.data.data_dir=DATA_DIR`.

  Raises:
    DatasetNotFoundError: one line naming the folder and these steps.
    DataError: an unknown split, or prepared files that cannot be read.
  """
  if split not in ("train", "validation") and not split.startswith(("train[", "validation[")):
    raise DataError(f"imagenet2012: use split 'train' or 'validation', not {split!r}.")
  where = data_dir or tfds_source.tfds_default_data_dir()
  return tfds_source.load_tfds(
      IMAGENET_TFDS_NAME, split, data_dir, pretty_name="ImageNet (imagenet2012)",
      fix=(f" after putting {MANUAL_DOWNLOAD} in {where}/downloads/manual/ (tfds's "
           "manual_dir)."))


sources.register_dataset(IMAGENET_TFDS_NAME, load_imagenet, IMAGENET_INFO)
