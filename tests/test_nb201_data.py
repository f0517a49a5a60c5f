"""CIFAR-100 and ImageNet16-120 loaders (NAS-Bench-201's datasets) on small fake files."""
import os
import pickle

import numpy as np
import pytest

from jdarts import data
from jdarts.data import nb201_data


def _chw_rows(images):
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def test_cifar100_pickles_fine_labels(tmp_path):
  rng = np.random.RandomState(0)
  folder = tmp_path / "cifar-100-python"
  folder.mkdir()
  want = {}
  for split, n in (("train", 6), ("test", 3)):
    images = rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    fine = rng.randint(0, 100, n)
    with open(folder / split, "wb") as f:
      pickle.dump({b"data": _chw_rows(images), b"fine_labels": fine.tolist(),
                   b"coarse_labels": (fine // 5).tolist()}, f)
    want[split] = (images, fine)
  assert data.get_info("cifar100").num_classes == 100
  for split, (images, fine) in want.items():
    src = data.load_source("cifar100", split, str(tmp_path))
    assert len(src) == len(fine)
    np.testing.assert_array_equal(np.stack([src[i]["image"] for i in range(len(src))]), images)
    np.testing.assert_array_equal([src[i]["label"] for i in range(len(src))], fine)
  with open(folder / "test", "wb") as f:
    pickle.dump({b"data": _chw_rows(images), b"labels": [0] * len(images)}, f)
  with pytest.raises(data.DataError, match="lacks 'data' or 'fine_labels'"):
    data.load_source("cifar100", "test", str(tmp_path))


def test_imagenet16_keeps_classes_up_to_120_shifted_to_zero(tmp_path):
  rng = np.random.RandomState(1)
  kept_images, kept_labels = [], []
  for name in nb201_data.IMAGENET16_FILES["train"] + nb201_data.IMAGENET16_FILES["test"]:
    images = rng.randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    labels = np.array([1, 120, 121, 1000])  # 1-based; the last two are dropped
    with open(tmp_path / name, "wb") as f:
      pickle.dump({"data": _chw_rows(images), "labels": labels.tolist(),
                   "mean": np.zeros(768)}, f)
    if name == "val_data":
      kept_images, kept_labels = images[:2], [0, 119]
  src = data.load_source("imagenet16_120", "test", str(tmp_path))
  assert len(src) == 2
  np.testing.assert_array_equal(np.stack([src[i]["image"] for i in range(2)]), kept_images)
  assert [int(src[i]["label"]) for i in range(2)] == kept_labels
  assert len(data.load_source("imagenet16_120", "train", str(tmp_path))) == 20
  assert data.get_info("imagenet16_120").image_shape == (16, 16, 3)


def test_imagenet16_missing_files_one_line(tmp_path):
  (tmp_path / "train_data_batch_1").write_bytes(b"")
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.load_source("imagenet16_120", "train", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "train_data_batch_2" in msg and "train_data_batch_10" in msg
  assert "train_data_batch_1," not in msg.split("lacks")[1].split("of the")[0]
  with pytest.raises(data.DatasetNotFoundError, match="lacks val_data"):
    data.load_source("imagenet16_120", "test", str(tmp_path))
  with open(tmp_path / "val_data", "wb") as f:
    pickle.dump({"data": np.zeros((1, 768), np.uint8), "labels": [0]}, f)
  with pytest.raises(data.DataError, match=r"labels in \[0, 0\], outside \[1, 1000\]"):
    data.load_source("imagenet16_120", "test", str(tmp_path))
