"""The column names that every table of predictions shares (evaluation, cross-validation, inference and
the served model), in a module of its own: the served model imports it without scikit-learn."""


def probability_column(positive_class: str) -> str:
    """The column of P(``positive_class``): ``p_parasitized`` for the positive class ``Parasitized``."""
    return f"p_{positive_class.lower()}"
