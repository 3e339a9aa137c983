import pkgutil
import subprocess
import sys

import malaria_pipeline.ml


def test_the_torch_layer_imports_neither_kedro_nor_pandas():
    # The GPU machine and the benchmark use the torch code alone: it must not pull Kedro or pandas in.
    modules = sorted(f"malaria_pipeline.ml.{m.name}" for m in pkgutil.iter_modules(malaria_pipeline.ml.__path__))
    assert {"malaria_pipeline.ml.train", "malaria_pipeline.ml.packing", "malaria_pipeline.ml.throughput"} <= set(modules)
    code = (
        f"import sys; import {', '.join(modules)}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kedro', 'kedro_datasets', 'kedro_mlflow', 'pandas'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
