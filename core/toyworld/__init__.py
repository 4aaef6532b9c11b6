"""The toy world: a procedural, captioned 64x64 image world, small models trained on it (checker,
base pipeline) and DreamBooth's quality metrics measured with them on CPU."""
