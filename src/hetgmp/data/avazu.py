"""Avazu CTR (Kaggle) `train.gz` / `train.csv` -> dataset directory.

A comma-separated file with a header line: id, click, hour, C1, banner_pos,
site_id, ..., C21 (24 columns, 40,428,967 rows). `click` is the label; `id`
is dropped; the other 22 columns, `hour` included as the original did, are
categorical, each label-encoded in sorted string order over the whole file
(so "1005" < "1010" and "10" < "9": string order, not numeric). There are
no dense features: the dense arrays have shape (N, 0). Example row:

    1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,...

gives label 0 and, for `hour`, the rank of "14102100" among the distinct hours.
"""

from __future__ import annotations

from hetgmp.data.arrays import DatasetMeta
from hetgmp.data.encode import PrepareConfig, prepare_table
from hetgmp.data.reader import TableLayout

CATEGORICAL = (
    "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip
AVAZU = TableLayout(dataset="avazu", delimiter=",", label="click", dense=(), categorical=CATEGORICAL, quoting=True)


def prepare_avazu(config: PrepareConfig) -> DatasetMeta:
    """Prepare Avazu from `config.input` (train.gz or train.csv)."""
    return prepare_table(AVAZU, config)
