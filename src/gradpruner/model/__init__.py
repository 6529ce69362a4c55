"""The model: loading (the offline default, folders, Hub ids), surgery (architecture adapters
and the cut), the cost model of a cut and the memory check before training."""
