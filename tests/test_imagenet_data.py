"""ImageNet and CIFAR-10.1 inputs: tfds data sources (no TensorFlow) and the ImageNet transforms.

The transforms are checked against closed forms (where a known edge must land
after resize + center crop, what a full-image crop with a flip must give);
the tfds sources run under `tfds.testing.mock_data` at small image sizes.
"""
import io
import sys

import numpy as np
import pytest

from jdarts import data
from jdarts.data import imagenet


def test_random_resized_crop_box_bounds():
  rng = np.random.default_rng(0)
  for h, w in ((300, 200), (64, 480), (37, 51)):
    fractions, ratios = [], []
    for _ in range(500):
      top, left, ch, cw = imagenet.random_resized_crop_box(rng, h, w)
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
      fractions.append(ch * cw / (h * w))
      ratios.append(cw / ch)
    # Up to the rounding of the sides (and the fallback box).
    assert min(fractions) >= 0.08 * 0.8 and max(fractions) <= 1.0
    assert min(ratios) >= 0.75 * 0.85 and max(ratios) <= 4 / 3 / 0.85
  # No box of a 3/4..4/3 ratio fits a 1000 x 10 image: the central fallback.
  top, left, ch, cw = imagenet.random_resized_crop_box(rng, 1000, 10, scale=(0.9, 1.0))
  assert (cw, ch) == (10, round(10 / 0.75)) and top == (1000 - ch) // 2 and left == 0


def test_eval_transform_resizes_the_shorter_side_and_crops_the_centre():
  # 300 x 400 (h x w), black left half, white right half: resized to 256 x 341
  # (torchvision: int(256 * 400 / 300)), the edge moves to x = 170.67; the crop
  # starts at round((341 - 224) / 2) = 58, so the edge is at 112.67 in the output.
  image = np.zeros((300, 400, 3), np.uint8)
  image[:, 200:] = 255
  out = imagenet.ResizeCenterCrop(256, 224)([image])
  assert out.shape == (1, 224, 224, 3) and out.dtype == np.uint8
  row = out[0, 100, :, 0].astype(int)
  assert np.all(row[:111] == 0) and np.all(row[115:] == 255)
  assert np.all(out[0] == out[0, :1])  # every row alike: the vertical crop is centred
  # Portrait images: the width becomes 256.
  assert imagenet.ResizeCenterCrop(36, 32)([np.zeros((90, 40, 3), np.uint8)]).shape == (
      1, 32, 32, 3)


def test_train_transform_is_seeded_and_flips_half_the_time():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, size=(24, 30, 3), dtype=np.uint8)
  full = imagenet.InceptionCrop(16, scale=(1.0, 1.0), ratio=(30 / 24, 30 / 24), brightness=0,
                                contrast=0, saturation=0, hue=0)
  outs = full([image] * 40, list(range(40)))
  np.testing.assert_array_equal(outs, full([image] * 40, list(range(40))))
  from PIL import Image
  resized = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR))
  flipped = [bool(np.array_equal(o, resized[:, ::-1])) for o in outs]
  assert all(f or np.array_equal(o, resized) for f, o in zip(flipped, outs))
  assert 8 <= sum(flipped) <= 32
  # Colour jitter changes the pixels, never the shape; hue turns red to cyan.
  jittered = imagenet.InceptionCrop(16)([image] * 4, [0, 1, 2, 3])
  assert jittered.shape == (4, 16, 16, 3) and jittered.dtype == np.uint8
  red = Image.fromarray(np.full((4, 4, 3), (255, 0, 0), np.uint8))
  r, g, b = np.asarray(imagenet.adjust_hue(red, 0.5))[0, 0].astype(int)
  assert r < 10 and g > 240 and b > 240


def test_imagenet_and_cifar10_1_under_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  info = imagenet.imagenet_info(size=32, resize=36)
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    train = data.load_source("imagenet2012", "train", data_dir=str(tmp_path))
    valid = data.load_source("imagenet2012", "validation", data_dir=str(tmp_path))
    sizes = {train[i]["image"].shape for i in range(len(train))}
    assert len(sizes) > 1  # records of different sizes, decoded to uint8
    assert train[0]["image"].dtype == np.uint8 and 0 <= train[0]["label"] < 1000
    it = data.make_train_iterator(train, info, batch_size=4, seed=0)
    b1, b2 = next(it), next(it)
    assert b1["image"].shape == (4, 32, 32, 3) and b1["image"].dtype == np.float32
    again = data.make_train_iterator(train, info, batch_size=4, seed=0)
    again.set_state({"step": 1})
    np.testing.assert_array_equal(next(again)["image"], b2["image"])
    batches = list(data.make_eval_iterator(valid, info, batch_size=4))
    assert [b["mask"].sum() for b in batches] == [4, 4, 2]
    # The registered info: the paper's 224 x 224.
    full = data.get_info("imagenet2012")
    assert full.image_shape == (224, 224, 3) and full.num_classes == 1000
    assert next(data.make_train_iterator(train, full, batch_size=2, seed=0))["image"].shape == (
        2, 224, 224, 3)
    c101 = data.load_source("cifar10_1", "test", data_dir=str(tmp_path))
    assert len(c101) == 10 and c101[0]["image"].shape == (32, 32, 3)
  assert "tensorflow" not in sys.modules


def test_missing_imagenet_and_cifar10_1_say_how_to_prepare(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DatasetNotFoundError) as exc:
    data.load_source("imagenet2012", "train", data_dir=str(tmp_path))
  msg = str(exc.value)
  assert "\n" not in msg and str(tmp_path) in msg
  for part in ("tfds build imagenet2012", "ILSVRC2012_img_train.tar",
               "ILSVRC2012_img_val.tar", f"{tmp_path}/downloads/manual", "image-net.org"):
    assert part in msg, msg
  with pytest.raises(data.DatasetNotFoundError, match="tfds build cifar10_1/v4") as exc:
    data.load_source("cifar10_1", "test", data_dir=str(tmp_path))
  assert "\n" not in str(exc.value)


def test_tfds_decodes_jpeg_without_tensorflow():
  """tfds.data_source decodes an Image feature with PIL/OpenCV, not TensorFlow."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from PIL import Image
  y, x = np.mgrid[0:40, 0:60]
  image = np.stack([x * 4, y * 6, (x + y) * 2], -1).astype(np.uint8)  # smooth: JPEG-friendly
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=95)
  feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
  decoded = feature.decode_example_np(buf.getvalue())
  assert decoded.dtype == np.uint8 and decoded.shape == image.shape
  assert np.abs(decoded.astype(int) - image).mean() < 3
  assert "tensorflow" not in sys.modules
