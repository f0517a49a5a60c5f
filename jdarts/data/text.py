"""Word-level language-model corpora and their BPTT streams: PTB, WikiText-2, pydoc.

As the DARTS reference (quark0/darts `rnn/data.py`, `rnn/utils.py`):

* every line of a file is `line.split() + ['<eos>']`; one vocabulary is built
  over train, valid and test in that order (ids in order of first
  appearance);
* `batchify(ids, B)` drops the last `len % B` tokens and lays the rest out as B
  contiguous streams: row b is tokens [b N, (b + 1) N) (the reference's
  (N, B) array, transposed to batch-first);
* a segment of length T starting at column i has inputs [:, i:i+T] and
  targets [:, i+1:i+1+T].

Registered datasets: 'ptb' (ptb.train.txt, ptb.valid.txt, ptb.test.txt, as
Mikolov's preprocessed PTB, 10k words), 'wikitext2' (wiki.train.tokens,
wiki.valid.tokens, wiki.test.tokens) from `data.data_dir`, and 'pydoc': the
help texts that ship with Python (`pydoc_data.topics`, ~65k words), lowercased,
words seen fewer than 3 times in its training part replaced by `<unk>` (as
PTB's preprocessing does), the topics split deterministically (sorted by
name; every 10th topic from the 8th to valid, from the 9th to test).

The search reads the training text as the weights' stream and the validation
text as the architecture's (the reference's `search_data`), see
`search_data`.
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from jdarts.data.errors import DataError, DatasetNotFoundError
from jdarts.data.sources import SearchData, register_dataset

EOS = "<eos>"
SPLITS = ("train", "valid", "test")
FILES = {"ptb": ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
         "wikitext2": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")}
PYDOC_MIN_COUNT = 3


class TextInfo(NamedTuple):
  """A text dataset's description: what a language-model space reads.

  Attributes:
    name: the dataset.
    vocab_size: words in the vocabulary (<eos> and <unk> included); None until read.
  """
  name: str
  vocab_size: Optional[int]


class Corpus(NamedTuple):
  """A tokenised corpus: int32 id arrays per split and the id -> word list."""
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  words: List[str]


def tokenize(splits: Sequence[Sequence[str]]) -> Corpus:
  """Lines of (train, valid, test) -> a `Corpus` with the reference's vocabulary."""
  index: Dict[str, int] = {}
  words: List[str] = []
  arrays = []
  for lines in splits:
    ids = []
    for line in lines:
      for w in line.split() + [EOS]:
        if w not in index:
          index[w] = len(words)
          words.append(w)
        ids.append(index[w])
    arrays.append(np.asarray(ids, np.int32))
  return Corpus(*arrays, words)


def read_files(name: str, data_dir: Optional[str]) -> Corpus:
  """The corpus `name` ('ptb' or 'wikitext2') from `data_dir`.

  Raises:
    DatasetNotFoundError: a file is missing (one line naming all three).
  """
  files = FILES[name]
  missing = [f for f in files if not (data_dir and os.path.isfile(os.path.join(data_dir, f)))]
  if missing:
    where = repr(data_dir) if data_dir else "no directory (data.data_dir is empty)"
    raise DatasetNotFoundError(
        f"{name}: expected {', '.join(files)} in {where}; missing {', '.join(missing)}; "
        f"pass --config.data.data_dir=DIR holding them.")
  splits = []
  for f in files:
    path = os.path.join(data_dir, f)
    try:
      with open(path, encoding="utf-8") as fh:
        splits.append(fh.read().splitlines())
    except (OSError, UnicodeDecodeError) as e:
      raise DataError(f"{path}: cannot be read as UTF-8 text ({type(e).__name__}: {e}).") from None
  return tokenize(splits)


def pydoc_lines() -> Tuple[List[str], List[str], List[str]]:
  """(train, valid, test) lines of Python's help texts (module docstring)."""
  from pydoc_data import topics
  parts: Tuple[List[str], List[str], List[str]] = ([], [], [])
  for i, key in enumerate(sorted(topics.topics)):
    part = 1 if i % 10 == 7 else 2 if i % 10 == 8 else 0
    parts[part].extend(ln.lower() for ln in topics.topics[key].splitlines() if ln.strip())
  counts: Dict[str, int] = {}
  for line in parts[0]:
    for w in line.split():
      counts[w] = counts.get(w, 0) + 1
  keep = lambda w: w if counts.get(w, 0) >= PYDOC_MIN_COUNT else "<unk>"
  return tuple([" ".join(keep(w) for w in ln.split()) for ln in p] for p in parts)


_CACHE: Dict[Tuple[str, Optional[str]], Corpus] = {}


def load_corpus(name: str, data_dir: Optional[str] = None) -> Corpus:
  """The tokenised corpus of a registered text dataset (cached per process)."""
  key = (name, data_dir or None)
  if key not in _CACHE:
    _CACHE[key] = tokenize(pydoc_lines()) if name == "pydoc" else read_files(name, data_dir)
  return _CACHE[key]


def batchify(ids: np.ndarray, batch_size: int, what: str = "text") -> np.ndarray:
  """(N,) ids -> (B, N // B): B contiguous streams, the remainder dropped (reference)."""
  n = len(ids) // batch_size
  if n < 2:
    raise DataError(f"{what}: {len(ids)} tokens cannot fill {batch_size} streams of "
                    f"2+ tokens; use a smaller batch_size.")
  return np.ascontiguousarray(ids[:n * batch_size].reshape(batch_size, n))


class BPTTStream:
  """Fixed-length segments of a batchified corpus, in order, cycling; resumable.

  Attributes:
    step: index of the next segment (over the whole stream, across epochs).
    steps_per_epoch: segments per pass, or the value given (a cycling
      stream paired with a longer one reports the longer one's epochs).
  """

  def __init__(self, data: np.ndarray, bptt: int, rows: slice = slice(None),
               steps_per_epoch: Optional[int] = None, what: str = "text"):
    self._data, self._bptt, self._rows = data, bptt, rows
    self.segments = (data.shape[1] - 1) // bptt
    if self.segments < 1:
      raise DataError(f"{what}: streams of {data.shape[1]} tokens hold no segment of "
                      f"bptt={bptt} + 1 tokens; lower model.bptt or the batch size.")
    self.steps_per_epoch = steps_per_epoch or self.segments
    self.step = 0
    self._fingerprint = {"shape": list(data.shape), "bptt": bptt}

  def __iter__(self) -> "BPTTStream":
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    i = (self.step % self.segments) * self._bptt
    self.step += 1
    d = self._data[self._rows]
    return {"inputs": d[:, i:i + self._bptt], "targets": d[:, i + 1:i + 1 + self._bptt]}

  def get_state(self) -> Dict:
    return {"step": self.step, **self._fingerprint}

  def set_state(self, state: Dict) -> None:
    mine = {k: state.get(k) for k in self._fingerprint}
    if mine != self._fingerprint:
      raise DataError(f"text stream: the checkpoint's stream {mine} differs from this "
                      f"run's {self._fingerprint}; resume with the same data and batch.")
    self.step = int(state["step"])


def eval_batches(data: np.ndarray, bptt: int) -> Iterator[Dict[str, np.ndarray]]:
  """All of a batchified split in order, the last segment padded (`token_mask` 0)."""
  b, n = data.shape
  for i in range(0, n - 1, bptt):
    t = min(bptt, n - 1 - i)
    inputs = np.zeros((b, bptt), np.int32)
    targets = np.zeros((b, bptt), np.int32)
    inputs[:, :t], targets[:, :t] = data[:, i:i + t], data[:, i + 1:i + 1 + t]
    mask = np.zeros((b, bptt), np.float32)
    mask[:, :t] = 1.0
    yield {"inputs": inputs, "targets": targets, "token_mask": mask,
           "deterministic": np.ones((b,), bool)}


def local_rows(batch_size: int, shard_index: int, shard_count: int) -> slice:
  """This process's rows of a global batch of `batch_size` streams."""
  if batch_size % shard_count:
    raise DataError(f"batch_size {batch_size} must be a multiple of the "
                    f"process count {shard_count}.")
  b = batch_size // shard_count
  return slice(shard_index * b, (shard_index + 1) * b)


def search_data(cfg, shard_index: int = 0, shard_count: int = 1) -> SearchData:
  """Search streams: train text for the weights, valid text for the alphas (reference).

  The validation stream cycles and reports the training stream's epoch
  length, as the reference reads it at `i % len(valid)`. Held-out sets
  ('search_val': valid, 'test') come in batches of `cfg.batch_size` streams,
  the batch the search's carry is made for.
  """
  name, bptt, b = cfg.data.name, cfg.model.bptt, cfg.batch_size
  corpus = load_corpus(name, cfg.data.data_dir or None)
  rows = local_rows(b, shard_index, shard_count)
  train = BPTTStream(batchify(corpus.train, b, f"{name} train"), bptt, rows,
                     what=f"{name} train")
  val = BPTTStream(batchify(corpus.valid, b, f"{name} valid"), bptt, rows,
                   steps_per_epoch=train.steps_per_epoch, what=f"{name} valid")
  held = {"search_val": corpus.valid, "test": corpus.test}
  evals = {k: (lambda ids=ids, k=k: eval_batches(batchify(ids, b, f"{name} {k}")[rows], bptt))
           for k, ids in held.items()}
  info = TextInfo(name, len(corpus.words))
  return SearchData(train, val, info, evals, len(corpus.valid), unit="tokens",
                    items_per_row=bptt)


def _loader(name):
  def load(split: str, data_dir: Optional[str]):
    if split not in SPLITS:
      raise DataError(f"{name}: unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    return getattr(load_corpus(name, data_dir), split)
  return load


class _PydocInfo(TextInfo):
  """TextInfo whose vocab_size is read from the texts when first asked."""

  @property
  def vocab_size(self):
    return len(load_corpus("pydoc").words)


# Vocabulary sizes of the standard files (reference data.Corpus on them).
register_dataset("ptb", _loader("ptb"), TextInfo("ptb", 10000), search_data=search_data)
register_dataset("wikitext2", _loader("wikitext2"), TextInfo("wikitext2", 33278),
                 search_data=search_data)
register_dataset("pydoc", _loader("pydoc"), _PydocInfo("pydoc", None), search_data=search_data)
