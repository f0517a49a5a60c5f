"""Input pipelines: random-access sources and deterministic grain pipelines.

Typical use::

    from jdarts import data

    info = data.get_info('cifar10')
    train = data.load_source('cifar10', 'train', data_dir)
    search_train, search_val = data.search_split(train, train_portion=0.5)
    it = data.make_train_iterator(search_train, info, batch_size=64, seed=0,
                                  shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
    batch = next(it)          # {'image', 'label', 'mask'}
    state = it.get_state()    # JSON-serialisable; it.set_state(state) resumes

Registered datasets: 'cifar10' (tfds or the python pickle files),
'cifar10_1' (tfds, a second CIFAR-10 test set), 'imagenet2012' (tfds, with
the reference's crop/flip/colour-jitter augmentation: `jdarts.data.imagenet`),
'cifar100' and 'imagenet16_120' (NAS-Bench-201's other datasets:
`jdarts.data.nb201_data`), 'digits' (ships with scikit-learn), 'synthetic', and
the word-level text corpora 'ptb', 'wikitext2' and 'pydoc' (`jdarts.data.text`:
token streams cut into BPTT segments, with their own search streams).

Bad data raises `DataError` (a ValueError) and missing data
`DatasetNotFoundError` (a FileNotFoundError), each with a one-line message
naming the file (or dataset and split), the problem and the fix.

Nothing here imports TensorFlow; tensorflow_datasets, scikit-learn and PIL are
imported only when a dataset that needs them is loaded.
"""
from jdarts.data.errors import DataError
from jdarts.data.errors import DatasetNotFoundError
from jdarts.data.pipeline import CheckpointableIterator
from jdarts.data.pipeline import make_eval_iterator
from jdarts.data.pipeline import make_train_iterator
from jdarts.data.sources import ArraySource
from jdarts.data.sources import DATASETS
from jdarts.data.sources import DatasetInfo
from jdarts.data.sources import get_info
from jdarts.data.sources import load_source
from jdarts.data.sources import make_synthetic
from jdarts.data.sources import register_dataset
from jdarts.data.sources import search_split
from jdarts.data.sources import SearchData
from jdarts.data.sources import SubsetSource
from jdarts.data.sources import get_entry
from jdarts.data.search_streams import build_search_data
from jdarts.data import cifar  # registers 'cifar10', 'cifar10_1'  # noqa: E402
from jdarts.data import imagenet  # registers 'imagenet2012'  # noqa: E402
from jdarts.data import nb201_data  # registers 'cifar100', 'imagenet16_120'  # noqa: E402
from jdarts.data import text  # registers 'ptb', 'wikitext2', 'pydoc'  # noqa: E402

__all__ = [
    "ArraySource",
    "DataError",
    "CheckpointableIterator",
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "SubsetSource",
    "cifar",
    "get_info",
    "imagenet",
    "nb201_data",
    "load_source",
    "make_eval_iterator",
    "make_synthetic",
    "make_train_iterator",
    "register_dataset",
    "search_split",
]
