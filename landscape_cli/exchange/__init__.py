"""Exchange with other tools: `importer` (checkpoints trained elsewhere, read through `unpickle`'s
restricted unpickler when `weights_only` refuses them) and `export` (NetCDF, CSV, VTK, npz)."""
