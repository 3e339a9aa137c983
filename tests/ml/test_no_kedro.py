import subprocess
import sys


def test_torch_code_imports_without_kedro():
    # The GPU machine and the benchmark use the torch code alone: it must not pull Kedro in.
    code = (
        "import sys, malaria_pipeline.ml.images, malaria_pipeline.ml.normalization, malaria_pipeline.packing; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kedro', 'kedro_datasets')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
