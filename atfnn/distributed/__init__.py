"""Scale-out beyond one machine's process pool: folds and seeds as Ray tasks (ray_executor), one model on several
processes with torch DistributedDataParallel (ddp). Both are optional: `pip install 'atfnn[distributed]'`."""
