"""The data layer: datasets by name cut into the four roles, tokenizers and partitions.

See DESIGN.md ("Data roles"): a private pool partitioned across clients, a public
transfer set whose labels are never used, a labeled teacher set and a test set.
"""

from common.data.builtin import (
    default_cache_dir,
    ensure_rotten_tomatoes,
    ensure_stdlib_corpus,
    shared_data_dir,
)
from common.data.catalog import register
from common.data.corpus import read_text_corpus
from common.data.loaders import (
    encode_labels,
    load_text_classification_dir,
    read_labeled_texts,
)
from common.data.partition import (
    SCHEMES,
    label_entropy,
    partition,
    partition_stats,
    partition_table,
    plot_partition,
    summarize_partition,
)
from common.data.registry import dataset_entry, list_datasets, load_dataset
from common.data.roles import ROLE_NAMES, TASKS, DatasetRoles, Split
from common.data.timeseries import read_time_series_csv
from common.data.tokenize import (
    PAD_ID,
    TOKENIZER_KINDS,
    decode_batch,
    encode_batch,
    encode_stream,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)

__all__ = [
    "PAD_ID",
    "ROLE_NAMES",
    "SCHEMES",
    "TASKS",
    "TOKENIZER_KINDS",
    "DatasetRoles",
    "Split",
    "dataset_entry",
    "decode_batch",
    "default_cache_dir",
    "encode_batch",
    "encode_labels",
    "encode_stream",
    "ensure_rotten_tomatoes",
    "ensure_stdlib_corpus",
    "label_entropy",
    "list_datasets",
    "load_dataset",
    "load_text_classification_dir",
    "load_tokenizer",
    "partition",
    "partition_stats",
    "partition_table",
    "plot_partition",
    "read_labeled_texts",
    "read_text_corpus",
    "read_time_series_csv",
    "register",
    "save_tokenizer",
    "shared_data_dir",
    "summarize_partition",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
