"""Reading users' tables, torch-free, by one set of rules for vae-train and vae-score.

    sources  which reader a file goes to (suffix_of, TEXT_SUFFIXES, format_of); no pyarrow
    text     .csv/.tsv/.txt (each also .gz): layout (delimiter, header), read whole or in batches (pyarrow.csv)
    frames   any table file as pyarrow tables, whole or in batches; arrays: .npy memory-mapped
    numeric  the one rule for which columns are numeric and how their cells become numbers (NA_TOKENS)
    missing  the one missing-value policy (--na stop | drop)
    columns  feature and label columns -> x (N, D) float32
    errors   DataError, the failure every reader raises

Imports point one way: tables imports numpy (and pyarrow in the modules that parse), never training, runtime,
service or gaussian_vae; importing this package itself loads neither pyarrow nor torch.
"""

from vae_tables.errors import DataError, ReportedError
from vae_tables.sources import TEXT_SUFFIXES, format_of, suffix_of

__all__ = ["TEXT_SUFFIXES", "DataError", "ReportedError", "format_of", "suffix_of"]
