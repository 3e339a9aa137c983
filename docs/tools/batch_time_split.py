"""Where batch_inference's time goes (docs/batch-inference.md): python docs/tools/batch_time_split.py <folder>
Times, on this machine: starting Spark (the JVM) with conf/base/spark.yml on local[2]; Spark reading
every file (binaryFile, all bytes); decoding them with the package's decoder in one process; and the
network's forward pass over them in one process."""

import sys
import time
from pathlib import Path

import torch
import yaml

from malaria_pipeline.framework.spark import spark_session
from malaria_pipeline.ml import load_model
from malaria_pipeline.ml.images import ImageLimits, decode_cell_image

folder, bundle_path = sys.argv[1], sys.argv[2]
settings = {**yaml.safe_load(Path("conf/base/spark.yml").read_text()), "spark.master": "local[2]"}
start = time.perf_counter()
spark = spark_session(settings)
print(f"Spark session (JVM start): {time.perf_counter() - start:.1f} s")

from pyspark.sql import functions as F  # noqa: E402

start = time.perf_counter()
files = (
    spark.read.format("binaryFile")
    .option("recursiveFileLookup", "true")
    .option("pathGlobFilter", "*.{[pP][nN][gG],[jJ][pP][gG],[jJ][pP][eE][gG]}")
    .load(folder)
)
count, size = files.agg(F.count("*"), F.sum(F.length("content"))).first()
print(f"Spark reads {count} files ({size / 2**20:.1f} MiB): {time.perf_counter() - start:.1f} s")
spark.stop()

paths = sorted(Path(folder).rglob("*.png"))
limits = ImageLimits.from_params(
    yaml.safe_load(Path("conf/base/parameters_ingestion.yml").read_text())["ingestion"]["image_limits"], "x"
)
classifier = load_model(bundle_path)
start = time.perf_counter()
images = torch.stack(
    [decode_cell_image(path.read_bytes(), classifier.image_size, limits)[0] for path in paths]
)
print(f"Decoding {len(paths)} files in one process: {time.perf_counter() - start:.1f} s")
start = time.perf_counter()
classifier.predict_proba(images, batch_size=256)
print(f"Forward pass over them in one process (batches of 256): {time.perf_counter() - start:.1f} s")
