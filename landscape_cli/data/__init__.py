"""Datasets: the registry (built-in loaders, `pkg.module:factory`, entry points) and the loaded `Dataset`."""

from landscape_cli.data import builtin  # noqa: F401  (registers the built-in datasets)
from landscape_cli.data._registry import (
    DATA_ENV,
    Dataset,
    DatasetInfo,
    check_block_size,
    dataset_info,
    dataset_record,
    dataset_source,
    default_data_dir,
    from_factory,
    list_datasets,
    load_dataset,
    register_dataset,
    tensors_sha256,
)
from landscape_cli.data.builtin import digits_arrays

__all__ = [
    "DATA_ENV", "Dataset", "DatasetInfo", "check_block_size", "dataset_info", "dataset_record", "dataset_source",
    "default_data_dir", "digits_arrays", "from_factory", "list_datasets", "load_dataset", "register_dataset", "tensors_sha256",
]
