"""What Kedro and MLflow call by name: hooks, start-up, hardware profiles, catalog datasets, MLflow
tracking and the model registry, and the one module that touches Kedro's private attributes."""
