"""htl-miner's Python client: torch-free, on httpx. `HtlClient` wraps the v1 API; `htl` commands
(datasets, jobs, scores, checkpoints) are built on it."""

from client.api import HtlClient, HtlError, pack_dataset

__all__ = ["HtlClient", "HtlError", "pack_dataset"]
