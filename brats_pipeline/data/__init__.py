"""Data layer: dataset discovery, datalists and folds, synthetic phantoms (transforms and data module follow)."""
