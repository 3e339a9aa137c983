"""Peak memory of one mlflow.pyfunc predict call on N rows (docs/batch-inference.md):
python docs/tools/pyfunc_rows.py <model uri> <folder of PNG cells> <rows>
Prints the rows answered, the seconds, and this process's peak RSS after loading and after predicting."""

import base64
import resource
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd

uri, folder, rows = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
files = sorted(folder.rglob("*.png"))[:rows]
images = [base64.b64encode(path.read_bytes()).decode() for path in files]
frame = pd.DataFrame({"image": [images[i % len(images)] for i in range(rows)]})
model = mlflow.pyfunc.load_model(uri)
model.predict(frame.head(8))  # the first call builds the network: not counted in the call below
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
answer = model.predict(frame)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(
    f"{rows} rows in, {len(answer)} answered ({answer['error'].notna().sum()} errors) in {seconds:.1f} s; "
    f"peak RSS {loaded:.0f} MiB after loading, {peak:.0f} MiB after predicting"
)
