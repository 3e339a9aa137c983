"""Benchmark of the pipeline against the reference notebooks' input pipeline, in one process.

    python -m malaria_pipeline.benchmark --source ../shared/data/malaria_cells_50px.zip

On the same machine and images it measures, in order:

1. ingestion: the ingestion node (index, decode, pack) on ``--source``: seconds and images/s;
2. training images/s of ``resnet9`` and ``resnet18``, through our input pipeline and through the
   reference's (``ImageFolder`` over the extracted PNGs, per-image PIL transforms, ``DataLoader``
   workers), same network, batch size, image size and speed switches, and the ratio of the two;
3. time to accuracy: a full ``training`` run (ingestion included) in a KedroSession, and the wall
   time until the end of the first epoch whose validation accuracy reaches ``--target-accuracy``;
4. inference images/s of the ``inference`` pipeline on ``--source``, and of that run's MLflow pyfunc
   model on base64 files in requests of ``--request-size``;
5. peak resident memory of this process and of its child processes.

The configuration is the project's (the hardware profile that ``profile: auto`` picks: ``cpu`` on a
machine without CUDA), with ``--params`` on top, as ``kedro run`` would use it. The results go to ``data/08_reporting/benchmark.md``
and ``benchmark.json`` (versioned, as every dataset of the project) and to an MLflow run of the
experiment ``malaria-pipeline-benchmark``.

The parts: :mod:`.cli` reads the command line and runs the measurements in order, :mod:`.measure`
takes them (the Kedro sessions included), :mod:`.report` writes and logs the results;
``__main__`` makes the package runnable.
"""
