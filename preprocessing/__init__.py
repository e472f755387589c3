"""preprocessing: the ITK stage (N4, resampling, alignment, normalisation). CPU only, importable on its own."""
