"""``python -m malaria_pipeline.benchmark``: see :mod:`malaria_pipeline.benchmark`."""

from malaria_pipeline.benchmark.cli import main

if __name__ == "__main__":  # the guard matters: ingestion's decoding workers are spawned
    main()
