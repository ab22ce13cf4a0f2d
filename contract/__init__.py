"""What htl-miner promises the outside world, importable without torch: the job spec and the dataset
folder layout. Both `ml/` and `app/` build on it; it imports neither."""
