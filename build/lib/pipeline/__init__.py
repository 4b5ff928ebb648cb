"""K-fold competition pipeline for Kaggle: make_folds -> train --fold all -> infer --tta -> submit."""
__version__ = "0.1.0"
