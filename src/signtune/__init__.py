"""signtune: Optuna-centred hyperparameter search for sign-language translation."""

__version__ = "0.1.0"
