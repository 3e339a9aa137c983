"""The column names that every table of predictions shares (evaluation, cross-validation, inference and
the served model), in a module of its own: the served model imports it without scikit-learn."""


def probability_column(positive_class: str) -> str:
    """The column of P(``positive_class``): ``p_parasitized`` for the positive class ``Parasitized``."""
    return f"p_{positive_class.lower()}"


# Beside P(positive class) predicted with test-time augmentation: the same model's probability from the
# first view alone (the image as it is), which the same forward passes give for free.
WITHOUT_TTA = "without_tta"


def without_tta_column(positive_class: str) -> str:
    """The column of P(``positive_class``) without test-time augmentation: ``p_parasitized_without_tta``."""
    return f"{probability_column(positive_class)}_{WITHOUT_TTA}"
