"""Reading the cell images and dividing them: the archive (a zip or a folder, local or downloaded), its
patients and splits, and the packed tensors the training loop takes. No Kedro, no MLflow."""
