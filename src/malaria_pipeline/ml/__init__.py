"""The torch code of malaria-pipeline: image decoding, and later models, augmentation and training.

Nothing in this subpackage imports Kedro, so it can be tested, benchmarked and run on a GPU machine
on its own; the Kedro nodes are thin adapters over it.
"""
