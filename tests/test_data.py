"""Tests of jdarts.data: sources, splits, augmentation, determinism, resume,
per-host sharding and eval padding."""
import json
import pickle
import sys

import numpy as np
import pytest

from jdarts import data
from jdarts.data import pipeline
from jdarts.data import sources


def _id_source(n, shape=(8, 8, 3), value=None):
  """Images whose content encodes the index; label == index."""
  if value is None:
    images = (np.arange(n)[:, None, None, None] * 7 +
              np.arange(np.prod(shape)).reshape(shape)) % 251
  else:
    images = np.full((n,) + shape, value)
  return data.ArraySource(images.astype(np.uint8), np.arange(n))


def _info(shape=(8, 8, 3), **kw):
  c = shape[-1]
  return data.DatasetInfo(name="test", image_shape=shape, num_classes=10,
                          mean=(0.5,) * c, std=(0.25,) * c, **kw)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ------------------------------------------------------------------ sources


def test_digits_source_sizes_and_stats():
  train = data.load_source("digits", "train")
  test = data.load_source("digits", "test")
  assert (len(train), len(test)) == (1500, 297)
  rec = train[0]
  assert rec["image"].shape == (8, 8, 1) and rec["image"].dtype == np.uint8
  assert set(np.unique(train.labels)) == set(range(10))
  assert test.labels.min() >= 0 and test.labels.max() <= 9
  assert train.images.max() == 255  # 16 * 255 / 16
  x = train.images / 255.0
  info = data.get_info("digits")
  np.testing.assert_allclose(info.mean, [x.mean()], rtol=1e-6)
  np.testing.assert_allclose(info.std, [x.std()], rtol=1e-6)
  assert not info.flip and info.crop_padding == 1
  # The split is a deterministic partition of all 1797 images.
  again = data.load_source("digits", "train")
  np.testing.assert_array_equal(again.images, train.images)
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  n_total = len(datasets.load_digits().images)
  assert len(train) + len(test) == n_total


def _write_fake_cifar(root, per_file=20):
  """Writes cifar-10-batches-py/ with pixel value f(file, image, c, y, x)."""
  d = root / "cifar-10-batches-py"
  d.mkdir()
  c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32),
                        indexing="ij")
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for f, name in enumerate(names):
    imgs = [(f * 50 + k * 3 + c * 60 + y * 2 + x) % 256
            for k in range(per_file)]
    arr = np.stack(imgs).astype(np.uint8).reshape(per_file, 3072)  # CHW rows
    labels = [(f + k) % 10 for k in range(per_file)]
    with open(d / name, "wb") as fh:
      pickle.dump({b"data": arr, b"labels": labels}, fh)
  return d


def test_cifar_pickle_reader_is_hwc(tmp_path):
  batches_dir = _write_fake_cifar(tmp_path)
  train = data.load_source("cifar10", "train", data_dir=str(tmp_path))
  test = data.load_source("cifar10", "test", data_dir=str(batches_dir))
  assert (len(train), len(test)) == (100, 20)
  # Record 25 is image k=5 of data_batch_2 (f=1).
  rec = train[25]
  assert rec["image"].shape == (32, 32, 3) and rec["image"].dtype == np.uint8
  f, k, y, x, c = 1, 5, 7, 11, 2
  assert rec["image"][y, x, c] == (f * 50 + k * 3 + c * 60 + y * 2 + x) % 256
  assert rec["label"] == (f + k) % 10
  f, k = 5, 19
  assert test[k]["image"][3, 30, 1] == (f * 50 + k * 3 + 60 + 6 + 30) % 256
  assert test[k]["label"] == (f + k) % 10


def test_tfds_data_source_under_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  # USE_CODE mocks the array_record data source itself, so it needs neither
  # prepared files nor TensorFlow (AUTO falls back to it; USE_FILES needs
  # real metadata files).
  with tfds.testing.mock_data(num_examples=12,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    src = data.load_source("cifar10", "train", data_dir=str(tmp_path))
    assert len(src) == 12
    rec = src[3]
    assert set(rec) == {"image", "label"}
    assert rec["image"].shape == (32, 32, 3) and rec["image"].dtype == np.uint8
    assert 0 <= rec["label"] < 10
    it = data.make_train_iterator(src, data.get_info("cifar10"), batch_size=4,
                                  seed=0)
    assert next(it)["image"].shape == (4, 32, 32, 3)
  assert "tensorflow" not in sys.modules


def test_missing_dataset_message(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DatasetNotFoundError) as exc:
    data.load_source("cifar10", "train", data_dir=str(tmp_path))
  msg = str(exc.value)
  assert isinstance(exc.value, FileNotFoundError)
  assert str(tmp_path) in msg and "tfds build" in msg
  assert "cifar-10-batches-py" in msg and "\n" not in msg
  assert exc.value.__suppress_context__  # no chained tfds traceback


def test_unknown_dataset_names_known_ones():
  with pytest.raises(KeyError, match="cifar10.*digits"):
    data.load_source("cifar1000", "train")


def test_register_dataset():
  info = data.DatasetInfo("mine", (8, 8, 3), 10, (0.5,) * 3, (0.25,) * 3)
  data.register_dataset("mine", lambda split, data_dir: _id_source(7), info)
  try:
    assert len(data.load_source("mine", "train")) == 7
    assert data.get_info("mine") is info
    with pytest.raises(ValueError, match="already registered"):
      data.register_dataset("mine", lambda split, data_dir: None, info)
  finally:
    del data.DATASETS["mine"]


def test_synthetic_is_learnable():
  info = data.get_info("synthetic")
  train = data.load_source("synthetic", "train")
  test = data.load_source("synthetic", "test")
  assert train.images.shape[1:] == info.image_shape
  # Nearest class mean, fitted on train, must separate the test classes.
  means = np.stack([train.images[train.labels == k].mean(0).ravel()
                    for k in range(info.num_classes)])
  x = test.images.reshape(len(test), -1).astype(np.float64)
  d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)
  assert (d2.argmin(1) == test.labels).mean() > 0.9


def test_search_split_halves_disjoint():
  src = _id_source(101)
  a, b = data.search_split(src, 0.5)
  assert (len(a), len(b)) == (50, 51)
  ids_a = [a[i]["label"] for i in range(len(a))]
  ids_b = [b[i]["label"] for i in range(len(b))]
  assert ids_a == list(range(50)) and ids_b == list(range(50, 101))
  # A generic (non-array) source is split the same way.
  a2, b2 = data.search_split(sources.SubsetSource(src, range(101)), 0.5)
  assert [a2[i]["label"] for i in range(len(a2))] == ids_a
  assert [b2[i]["label"] for i in range(len(b2))] == ids_b


# ------------------------------------------------------------ augmentation


def test_crop_is_a_window_of_the_padded_image():
  shape, pad = (8, 8, 3), 2
  src, info = _id_source(16, shape), _info(shape, crop_padding=pad, flip=False)
  batch = next(data.make_train_iterator(src, info, batch_size=16, seed=1))
  assert batch["image"].shape == (16,) + shape
  norm = pipeline.Normalizer(info)
  offsets = set()
  for img, label in zip(batch["image"], batch["label"]):
    padded = np.pad(src.images[label], ((pad, pad), (pad, pad), (0, 0)))
    hits = [(y, x) for y in range(2 * pad + 1) for x in range(2 * pad + 1)
            if np.array_equal(img, norm(padded[None, y:y + 8, x:x + 8])[0])]
    assert len(hits) == 1
    offsets.add(hits[0])
  assert len(offsets) > 3  # crops vary


def test_flip_statistics_and_digits_never_flip():
  shape = (8, 8, 1)
  img = np.zeros(shape, np.uint8)
  img[:, 0] = 255  # only the left column is bright
  src = data.ArraySource(np.repeat(img[None], 64, 0), np.zeros(64))
  it = data.make_train_iterator(src, _info(shape, crop_padding=0, flip=True),
                                batch_size=64, seed=3)
  flipped = [b["image"][:, 0, -1, 0] > b["image"][:, 0, 0, 0]
             for b in _take(it, 20)]
  frac = np.mean(flipped)
  assert 0.45 < frac < 0.55, frac  # 1280 fair coins: sd ~0.014
  # Digits' defaults: 1-pixel crops, no flips: the bright column moves to
  # x <= 1 (or off the image), never to the right side.
  it = data.make_train_iterator(src, data.get_info("digits"), batch_size=64,
                                seed=3)
  bright = np.concatenate([b["image"][:, 0, :, 0] > 0 for b in _take(it, 5)])
  assert bright[:, :2].any() and not bright[:, 2:].any()


def test_cutout_zeroes_a_clipped_square():
  shape, length = (16, 16, 3), 8
  src = _id_source(64, shape, value=200)  # normalises to 1.137, never 0
  it = data.make_train_iterator(src, _info(shape), batch_size=64, seed=0,
                                augment=False, cutout=length)
  full = 0
  for batch in _take(it, 4):
    zero = batch["image"] == 0.0
    assert (zero.all(-1) == zero.any(-1)).all()  # all channels together
    for z in zero[..., 0]:
      rows, cols = np.nonzero(z.any(1))[0], np.nonzero(z.any(0))[0]
      assert len(rows) and len(cols)
      r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
      assert z.sum() == (r1 - r0) * (c1 - c0)  # a filled rectangle
      # Unclipped sides have exactly `length` pixels.
      assert (r1 - r0 == length) or r0 == 0 or r1 == shape[0]
      assert (c1 - c0 == length) or c0 == 0 or c1 == shape[1]
      assert r1 - r0 <= length and c1 - c0 <= length
      full += z.sum() == length * length
  assert full > 0
  assert np.all(batch["image"][~zero] != 0.0)


def test_train_batches_structure_and_epochs():
  src, info = _id_source(40), _info()
  it = data.make_train_iterator(src, info, batch_size=16, seed=0)
  assert it.steps_per_epoch == 2  # 40 // 16, remainder dropped
  epochs = [_take(it, 2) for _ in range(3)]
  b = epochs[0][0]
  assert b["image"].dtype == np.float32 and b["image"].shape == (16, 8, 8, 3)
  assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
  assert (b["mask"] == 1).all()
  epochs = [np.concatenate([x["label"] for x in e]) for e in epochs]
  for e in epochs:
    assert len(np.unique(e)) == 32  # no example twice within an epoch
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled per epoch


def test_determinism_and_seeds():
  src, info = _id_source(64), _info()
  make = lambda seed: data.make_train_iterator(src, info, batch_size=16,
                                               seed=seed, cutout=4)
  _assert_batches_equal(_take(make(5), 6), _take(make(5), 6))
  a, b = next(make(5)), next(make(6))
  assert not np.array_equal(a["label"], b["label"])
  assert not np.array_equal(a["image"], b["image"])


@pytest.mark.parametrize("num_threads", [0, 2])
def test_state_save_restore_continues_exactly(num_threads):
  src, info = _id_source(50), _info()
  make = lambda: data.make_train_iterator(src, info, batch_size=16, seed=7,
                                          cutout=4, num_threads=num_threads)
  it = make()
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 3
  expected = _take(it, 4)  # crosses an epoch boundary (3 steps per epoch)
  it.close()
  fresh = make()
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected)
  fresh.close()
  other = data.make_train_iterator(src, info, batch_size=16, seed=8)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)


def test_shards_concatenate_to_global_batch():
  src, info = _id_source(70), _info()
  kw = dict(batch_size=16, seed=2, cutout=4)
  full = _take(data.make_train_iterator(src, info, **kw), 5)
  shards = [_take(data.make_train_iterator(src, info, shard_index=i,
                                           shard_count=4, **kw), 5)
            for i in range(4)]
  for step, batch in enumerate(full):
    for k in batch:
      joined = np.concatenate([s[step][k] for s in shards])
      np.testing.assert_array_equal(joined, batch[k])
  with pytest.raises(ValueError, match="multiple of shard_count"):
    data.make_train_iterator(src, info, batch_size=16, seed=0, shard_count=3)


def test_eval_covers_every_example_once():
  src, info = _id_source(50), _info()
  batches = list(data.make_eval_iterator(src, info, batch_size=16))
  assert len(batches) == 4
  for b in batches:
    assert b["image"].shape == (16, 8, 8, 3) and b["mask"].shape == (16,)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert mask.sum() == 50 and (mask[:50] == 1).all()
  np.testing.assert_array_equal(labels[mask == 1], np.arange(50))
  assert (batches[-1]["image"][2:] == 0).all()  # padding rows
  # Sharded eval: shards concatenate to the global batches.
  shards = [list(data.make_eval_iterator(src, info, batch_size=16,
                                         shard_index=i, shard_count=2))
            for i in range(2)]
  for step, batch in enumerate(batches):
    for k in batch:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][k], shards[1][step][k]]), batch[k])
