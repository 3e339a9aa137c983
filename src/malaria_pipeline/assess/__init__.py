"""Judging predictions: metrics and their patient-bootstrap intervals, the operating point and the
temperature, label issues, the figures and the model card. No Kedro, no MLflow."""
