"""attnlab.data: synthetic tasks (1D sequences and 2D grids), byte-level text and TFDS as grain
datasets.

The trainer only needs `make_dataset`, `vocab_size`, `default_data_config` and
`iterator_checkpoint_args` (see `attnlab.data.pipeline`). Importing this package
imports neither TensorFlow nor tensorflow_datasets.
"""

from attnlab.data.grid_tasks import GridQuadrantSource, grid_quadrant_dataset
from attnlab.data.pipeline import (
    DATASET_NAMES,
    data_iterator,
    default_data_config,
    iterator_checkpoint_args,
    make_dataset,
    num_classes,
    resolve_config,
    source_dataset,
    vocab_size,
)
from attnlab.data.synthetic import (
    PAD_ID,
    SEP_ID,
    CopyingSource,
    MQARClassificationSource,
    MQARSource,
    SelectiveCopyingSource,
    copying_dataset,
    mqar_classification_dataset,
    mqar_dataset,
    selective_copying_dataset,
)
from attnlab.data.text import (
    BYTE_VOCAB_SIZE,
    ByteWindowSource,
    byte_lm_dataset,
    corpus_split_files,
    load_byte_corpus,
)
from attnlab.data.tfds_source import (
    TextToClassification,
    TextToLM,
    tfds_dataset,
    tfds_num_classes,
)

__all__ = [
    "BYTE_VOCAB_SIZE",
    "ByteWindowSource",
    "CopyingSource",
    "DATASET_NAMES",
    "GridQuadrantSource",
    "MQARClassificationSource",
    "MQARSource",
    "PAD_ID",
    "SEP_ID",
    "SelectiveCopyingSource",
    "TextToClassification",
    "TextToLM",
    "byte_lm_dataset",
    "copying_dataset",
    "corpus_split_files",
    "data_iterator",
    "default_data_config",
    "grid_quadrant_dataset",
    "iterator_checkpoint_args",
    "load_byte_corpus",
    "make_dataset",
    "mqar_classification_dataset",
    "mqar_dataset",
    "num_classes",
    "resolve_config",
    "selective_copying_dataset",
    "source_dataset",
    "tfds_dataset",
    "tfds_num_classes",
    "vocab_size",
]
