"""Bad data files give one clear line, never a traceback (jdarts.data.errors).

One test per bad input: each writes its bad file (or a prepared tfds dataset
it corrupts) under tmp_path and checks the error type and that the message
is one line naming the file (or dataset and split) and the problem.
"""
import io
import os
import pickle

import numpy as np
import pytest

from jdarts import data

_CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _write_cifar(root, per_file=6):
  """A well-formed cifar-10-batches-py/ folder with `per_file` images a file."""
  d = root / "cifar-10-batches-py"
  d.mkdir()
  rng = np.random.default_rng(0)
  for name in _CIFAR_NAMES:
    batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
             b"labels": [k % 10 for k in range(per_file)]}
    with open(d / name, "wb") as f:
      pickle.dump(batch, f)
  return d


def _load_error(error_type, data_dir, split="train", name="cifar10"):
  """Loads `split` and returns the one-line message of the expected error."""
  with pytest.raises(error_type) as exc:
    data.load_source(name, split, data_dir=str(data_dir))
  msg = str(exc.value)
  assert "\n" not in msg and "Traceback" not in msg, msg
  return msg


# --------------------------------------------------- CIFAR-10 pickle files


def _good_batch(n=6):
  return {b"data": np.zeros((n, 3072), np.uint8), b"labels": [1] * n}


def _pickled(obj):
  return pickle.dumps(obj)


# (file contents, the problem the message must state)
_BAD_PICKLES = {
    "not_a_pickle": (b"<html>404 Not Found</html>\n",
                     "is not a readable CIFAR-10 pickle"),
    "empty_file": (b"", "is truncated"),
    "truncated": (_pickled(_good_batch())[:-3000], "is truncated"),
    "not_a_dict": (_pickled([1, 2, 3]), "holds a list, not the dict"),
    "wrong_keys": (_pickled({b"images": np.zeros((6, 3072), np.uint8),
                             b"targets": [0] * 6}),
                   "lacks b'data' and b'labels' (it has "
                   "b'images', b'targets')"),
    "no_labels_key": (_pickled({b"data": np.zeros((6, 3072), np.uint8)}),
                      "lacks b'labels' (it has b'data')"),
    "rows_not_3072": (_pickled({b"data": np.zeros((6, 1024), np.uint8),
                                b"labels": [0] * 6}),
                      "data is uint8 (6, 1024), not uint8 (n, 3072)"),
    "data_as_images": (_pickled({b"data": np.zeros((6, 32, 32, 3), np.uint8),
                                 b"labels": [0] * 6}),
                       "data is uint8 (6, 32, 32, 3), not uint8 (n, 3072)"),
    "float_pixels": (_pickled({b"data": np.zeros((6, 3072), np.float32),
                               b"labels": [0] * 6}),
                     "data is float32 (6, 3072), not uint8 (n, 3072)"),
    "zero_images": (_pickled({b"data": np.zeros((0, 3072), np.uint8),
                              b"labels": []}), "holds 0 images"),
    "label_count": (_pickled({b"data": np.zeros((6, 3072), np.uint8),
                              b"labels": [0] * 5}),
                    "has 5 labels for 6 images"),
    "label_10": (_pickled({b"data": np.zeros((6, 3072), np.uint8),
                           b"labels": [0, 1, 2, 3, 4, 10]}),
                 "has labels in [0, 10], outside [0, 10)"),
    "label_negative": (_pickled({b"data": np.zeros((6, 3072), np.uint8),
                                 b"labels": [-1, 1, 2, 3, 4, 5]}),
                       "has labels in [-1, 5], outside [0, 10)"),
    "label_strings": (_pickled({b"data": np.zeros((6, 3072), np.uint8),
                                b"labels": ["cat"] * 6}),
                      "labels are <U3 (6,), not a list of ints"),
}


@pytest.mark.parametrize("case", sorted(_BAD_PICKLES))
def test_bad_cifar_pickle_names_the_file(tmp_path, case):
  contents, problem = _BAD_PICKLES[case]
  d = _write_cifar(tmp_path)
  (d / "data_batch_3").write_bytes(contents)
  msg = _load_error(data.DataError, tmp_path)
  assert f"CIFAR-10 file {d / 'data_batch_3'}: {problem}" in msg, msg
  assert "re-download cifar-10-python.tar.gz" in msg
  # The other split does not read the bad file.
  assert len(data.load_source("cifar10", "test", data_dir=str(tmp_path))) == 6


def test_bad_cifar_test_batch_names_the_file(tmp_path):
  d = _write_cifar(tmp_path)
  (d / "test_batch").write_bytes(_pickled(_good_batch())[:100])
  msg = _load_error(data.DataError, tmp_path, split="test")
  assert f"CIFAR-10 file {d / 'test_batch'}: is truncated" in msg, msg


def test_missing_cifar_batches_are_all_named(tmp_path):
  d = _write_cifar(tmp_path)
  os.remove(d / "data_batch_2")
  os.remove(d / "data_batch_4")
  msg = _load_error(data.DatasetNotFoundError, tmp_path)
  assert f"CIFAR-10 folder {d} lacks data_batch_2, data_batch_4 of the train" \
      " split" in msg, msg
  assert "re-download cifar-10-python.tar.gz" in msg


def test_unknown_cifar_split(tmp_path):
  _write_cifar(tmp_path)
  msg = _load_error(data.DataError, tmp_path, split="valid")
  assert "cifar10: unknown split 'valid'; use one of train, test." == msg


# ----------------------------------------------- prepared tfds datasets


def _prepare_tfds_cifar10(root, n=4, bad_record=None):
  """A prepared tfds cifar10 'train' split of `n` PNG records, no TensorFlow.

  Returns the path of its array_record file. `bad_record`: index of a record
  written as bytes that are not an encoded example.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module
  from PIL import Image
  from tensorflow_datasets.proto import tf_example_pb2
  # pylint: enable=g-import-not-at-top
  builder = tfds.builder("cifar10", data_dir=str(root),
                         file_format="array_record")
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name="cifar10", split="train",
      filetype_suffix="array_record")
  builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
      name="train", shard_lengths=[n], num_bytes=0,
      filename_template=template)]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  path = os.fspath(template.sharded_filepaths(1)[0])
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for k in range(n):
    png = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 10 * k, np.uint8)).save(png, "PNG")
    example = tf_example_pb2.Example()
    feature = example.features.feature
    feature["image"].bytes_list.value.append(png.getvalue())
    feature["label"].int64_list.value.append(k % 10)
    feature["id"].bytes_list.value.append(b"train_%d" % k)
    record = example.SerializeToString()
    writer.write(b"\xff" * len(record) if k == bad_record else record)
  writer.close()
  return path


def test_prepared_tfds_dataset_loads(tmp_path):
  _prepare_tfds_cifar10(tmp_path)
  src = data.load_source("cifar10", "train", data_dir=str(tmp_path))
  assert len(src) == 4 and src[2]["image"][0, 0, 0] == 20
  assert src.origin.startswith("cifar10 split 'train' from ")


@pytest.mark.parametrize("damage,problem", [
    ("garbage", "Corrupted Riegeli/records file"),
    ("empty", "ArrayRecord file should be at least 64KB big"),
    ("truncated", "cannot read record 0"),
])
def test_corrupt_tfds_record_file_names_the_file(tmp_path, damage, problem):
  path = _prepare_tfds_cifar10(tmp_path)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    if damage == "garbage":
      f.write(b"x" * size)
    else:
      f.truncate(0 if damage == "empty" else size // 2)
  msg = _load_error(data.DataError, tmp_path)
  assert msg.startswith(f"{path}: cannot read record 0 ("), msg
  assert problem in msg and "tfds build cifar10" in msg


def test_missing_tfds_record_file_names_the_file(tmp_path):
  path = _prepare_tfds_cifar10(tmp_path)
  os.remove(path)
  msg = _load_error(data.DataError, tmp_path)
  assert msg.startswith(f"{path}: cannot read record 0 ("), msg
  assert "No such file or directory" in msg


def test_corrupt_tfds_metadata_names_the_folder(tmp_path):
  path = _prepare_tfds_cifar10(tmp_path)
  with open(os.path.join(os.path.dirname(path), "dataset_info.json"),
            "w") as f:
    f.write("{not json")
  msg = _load_error(data.DataError, tmp_path)
  assert msg.startswith(f"CIFAR-10 under {tmp_path}: tfds cannot open split "
                        "'train' (ParseError: "), msg


def test_bad_tfds_record_later_in_the_file_fails_its_batch(tmp_path):
  path = _prepare_tfds_cifar10(tmp_path, n=8, bad_record=5)
  src = data.load_source("cifar10", "train", data_dir=str(tmp_path))
  it = data.make_eval_iterator(src, data.get_info("cifar10"), batch_size=4)
  next(it)
  with pytest.raises(data.DataError) as exc:
    next(it)
  msg = str(exc.value)
  assert "\n" not in msg and msg.startswith(f"{path}: cannot read record 5 ")


@pytest.mark.parametrize("split,problem", [
    ("train[:0]", "split 'train[:0]' has 0 examples"),
    ("test", "tfds cannot open split 'test' (ValueError: Unknown split"),
])
def test_empty_or_absent_tfds_split(tmp_path, split, problem):
  _prepare_tfds_cifar10(tmp_path)
  msg = _load_error(data.DataError, tmp_path, split=split)
  assert msg.startswith(f"CIFAR-10 under {tmp_path}: {problem}"), msg


# ------------------------------------------- any registered dataset's loader


class _ListSource:
  """A plain (non-array) source over a list of records."""

  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


@pytest.fixture(name="register")
def _register_fixture():
  """register(loader, shape, num_classes): a dataset named 'bad'."""
  def register(loader, shape=(8, 8, 3), num_classes=10):
    info = data.DatasetInfo("bad", shape, num_classes, (0.5,) * shape[-1],
                            (0.25,) * shape[-1])
    data.register_dataset("bad", lambda split, data_dir: loader(), info,
                          overwrite=True)
  yield register
  data.DATASETS.pop("bad", None)


def _array(n, shape=(8, 8, 3), labels=None):
  return data.ArraySource(np.zeros((n,) + shape, np.uint8),
                          np.arange(n) % 10 if labels is None else labels)


_BAD_LOADS = {
    "empty_split": (lambda: _array(0), "has 0 examples"),
    "image_shape": (lambda: _array(4, (32, 32, 3)),
                    "images have shape (32, 32, 3), but bad's DatasetInfo "
                    "declares (8, 8, 3)"),
    "label_range": (lambda: _array(4, labels=[0, 3, 12, 1]),
                    "labels range over [0, 12], outside [0, 10) of bad"),
    "record_rank": (lambda: _ListSource([{"image": np.zeros((8, 8), np.uint8),
                                          "label": 0}]),
                    "images have shape (8, 8), but bad's DatasetInfo "
                    "declares (8, 8, 3)"),
    "record_dtype": (lambda: _ListSource([{"image": np.zeros((8, 8, 3)),
                                           "label": 0}]),
                     "record 0 has a float64 image"),
    "record_label": (lambda: _ListSource([{"image": np.zeros((8, 8, 3),
                                                             np.uint8),
                                           "label": -1}]),
                     "labels range over [-1, -1], outside [0, 10)"),
    "record_keys": (lambda: _ListSource([{"pixels": 0}]),
                    "record 0 is not an {'image': uint8 (H, W, C), 'label': "
                    "int} dict (KeyError('image'))"),
}


@pytest.mark.parametrize("case", sorted(_BAD_LOADS))
def test_bad_loader_output_names_dataset_and_split(tmp_path, register, case):
  loader, problem = _BAD_LOADS[case]
  register(loader)
  msg = _load_error(data.DataError, tmp_path, name="bad")
  assert msg.startswith(f"bad split 'train' from {tmp_path}"), msg
  assert problem in msg, msg


def test_search_split_too_small_for_train_portion(tmp_path, register):
  register(lambda: _array(1))
  src = data.load_source("bad", "train", data_dir=str(tmp_path))
  with pytest.raises(data.DataError) as exc:
    data.search_split(src, 0.5)
  assert str(exc.value) == (
      f"bad split 'train' from {tmp_path}: train_portion=0.5 splits its 1 "
      "examples into 0 and 1, and both parts need examples; use more data or "
      "a train_portion nearer 0.5.")


def test_search_part_too_small_for_a_batch(tmp_path, register):
  register(lambda: _array(100))
  info = data.get_info("bad")
  src = data.load_source("bad", "train", data_dir=str(tmp_path))
  weights, _ = data.search_split(src, 0.5)
  with pytest.raises(data.DataError) as exc:
    data.make_train_iterator(weights, info, batch_size=64, seed=0)
  assert str(exc.value) == (
      f"bad split 'train' from {tmp_path} [0:50] (train_portion=0.5): 50 "
      "examples cannot fill one batch of 64 (remainders are dropped); use a "
      "smaller batch_size or more data.")


def test_later_record_of_another_shape_fails_its_batch(tmp_path, register):
  good = {"image": np.zeros((8, 8, 3), np.uint8), "label": 0}
  bad = {"image": np.zeros((8, 9, 3), np.uint8), "label": 0}
  register(lambda: _ListSource([good] * 4 + [bad] * 4))
  src = data.load_source("bad", "train", data_dir=str(tmp_path))
  it = data.make_eval_iterator(src, data.get_info("bad"), batch_size=4)
  next(it)
  with pytest.raises(data.DataError) as exc:
    next(it)
  assert str(exc.value) == (
      f"bad split 'train' from {tmp_path}: a record of batch 1 has image "
      "shape (8, 9, 3), but bad's DatasetInfo declares (8, 8, 3); fix the "
      "data.")
