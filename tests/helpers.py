"""Helpers for the tests: real image files, small cell-image archives, tiny training settings, and
:class:`KedroProject`, the one way the tests run a pipeline (through the ``kedro_project`` and
``module_kedro_project`` fixtures of conftest.py).

Plain functions and constants live here; fixtures live in conftest.py. No test module imports from
another test module (tests/test_project.py checks it).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from malaria_pipeline.ml.images import ImageLimits

if TYPE_CHECKING:  # torch is imported where it is used: most tests need none of it
    import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Limits that let the tests' tiny images through (conf/base has the real ones).
ANY_IMAGE = ImageLimits(max_file_bytes=2**24, max_pixels=2**24, min_side=1, max_aspect_ratio=100.0)
# CI and developers have ../shared beside the checkout; MALARIA_SHARED_DIR points elsewhere.
SHARED_DIR = Path(os.environ.get("MALARIA_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
SHARED_ZIP = SHARED_DIR / "data" / "malaria_cells_50px.zip"


def base_image_limits() -> dict:
    """``ingestion.image_limits`` as conf/base sets it."""
    import yaml

    return yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_ingestion.yml").read_text())["ingestion"][
        "image_limits"
    ]


def image_bytes(
    width: int = 20, height: int = 20, mode: str = "RGB", fmt: str = "PNG", seed: int = 0
) -> bytes:
    """A real PNG or JPEG file of random pixels."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def cell_name(patient: str, number: int) -> str:
    return f"{patient}_IMG_20150101_000000_cell_{number}.png"


def write_cells(
    root: Path,
    patients: dict[str, dict[str, int]],
    size: int = 20,
    prefix: str = "cell_images",
    separable: bool = False,
) -> list[str]:
    """Writes ``{patient: {class: count}}`` PNG files under ``root/prefix/<class>/``, named
    ``<patient>_IMG_..._cell_<n>.png``: random pixels, or with ``separable`` parasitized cells dark
    (pixels 20-109) and uninfected ones bright (150-239), which a tiny model learns in a few epochs.
    Returns the archive paths written, sorted.
    """
    written = []
    number = 0
    for patient, counts in patients.items():
        for label, count in counts.items():
            folder = root / prefix / label if prefix else root / label
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                number += 1
                path = folder / cell_name(patient, number)
                if separable:
                    low, high = (20, 110) if label == "Parasitized" else (150, 240)
                    pixels = np.random.default_rng(number).integers(
                        low, high, size=(size, size, 3), dtype=np.uint8
                    )
                    Image.fromarray(pixels).save(path)
                else:
                    path.write_bytes(image_bytes(size, size, "RGB", seed=number))
                written.append(path.relative_to(root).as_posix())
    return sorted(written)


def zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path


# Six patients: four with cells of both classes, two with uninfected cells only (as in the real data).
SMALL_PATIENTS = {
    f"C{i}P{i}ThinF": ({"Parasitized": 4, "Uninfected": 4} if i < 4 else {"Uninfected": 5}) for i in range(6)
}


def add_bad_files(root: Path) -> dict[str, str]:
    """Adds the kinds of bad input the official archive (or a careless copy) holds; returns path → reason."""
    parasitized = root / "cell_images" / "Parasitized"
    uninfected = root / "cell_images" / "Uninfected"
    (parasitized / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 windows thumbnail cache")
    (uninfected / "C9P9ThinF_IMG_1_cell_empty.png").write_bytes(b"")
    (uninfected / "C9P9ThinF_IMG_1_cell_truncated.png").write_bytes(image_bytes(40, 40, seed=99)[:150])
    (parasitized / "C9P9ThinF_IMG_1_cell_text.png").write_text("I am a text file")
    (root / "cell_images" / "README.txt").write_text("about the data")
    return {
        "cell_images/Parasitized/Thumbs.db": "not an image file (suffix '.db'",
        "cell_images/Uninfected/C9P9ThinF_IMG_1_cell_empty.png": "empty file (0 bytes)",
        "cell_images/Uninfected/C9P9ThinF_IMG_1_cell_truncated.png": "truncated or corrupt image",
        "cell_images/Parasitized/C9P9ThinF_IMG_1_cell_text.png": "not a PNG or JPEG image",
        "cell_images/README.txt": "outside the class folders",
    }


def shared_zip_or_skip() -> Path:
    if not SHARED_ZIP.exists():
        pytest.skip(f"the shared data set is absent: {SHARED_ZIP} (set MALARIA_SHARED_DIR to its folder)")
    return SHARED_ZIP


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """An all-black 1-bit PNG of ``width × height``: tens of kB that decode to width·height·3 bytes of RGB."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def raw_png(samples: np.ndarray) -> bytes:
    """A PNG of ``H×W`` (gray) or ``H×W×3`` (RGB) ``uint8`` or ``uint16`` samples, written by hand (zlib,
    no filters), so that 16-bit RGB, which Pillow cannot write, can be made."""
    import struct
    import zlib

    height, width = samples.shape[:2]
    colour_type = 2 if samples.ndim == 3 else 0
    depth = 16 if samples.dtype == np.uint16 else 8
    rows = samples.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1)
    data = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


def corrupt_idat_png() -> bytes:
    """A PNG whose compressed pixel data is corrupt but whose chunk checksums are right (recomputed),
    as a hostile file would be: only decoding finds the damage."""
    import struct
    import zlib

    data = bytearray(raw_png(np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)))
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    data[start + 4 + length // 2] ^= 0xFF
    data[start + 4 + length : start + 8 + length] = struct.pack(
        ">I", zlib.crc32(bytes(data[start : start + 4 + length]))
    )
    return bytes(data)


# Every training knob, written out: TrainConfig has no defaults (conf/base holds the project's). Small
# and fast: a tiny ResNet-9 on the CPU in float32.
TRAIN_PARAMS = {
    "architecture": "resnet9",
    "width": 4,
    "small_input_stem": None,
    "pretrained": False,
    "device": "cpu",
    "seed": 42,
    "epochs": 2,
    "max_lr": 0.01,
    "head_epochs": 0,
    "head_max_lr": 0.01,
    "lr_ratio": 100,
    "pct_start": 0.25,
    "div_factor": 25,
    "final_div_factor": 10000,
    "optimizer": "adam",
    "weight_decay": 1e-4,
    "grad_clip": 0.1,
    "label_smoothing": 0.0,
    "batch_size": 12,
    "eval_batch_size": 1024,
    "pad": 2,
    "flips": True,
    "rotations": True,
    "brightness": 0.0,
    "contrast": 0.0,
    "gamma": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
    "ema_decay": None,
    "bf16": False,
    "channels_last": True,
    "compile": False,
    "deterministic": False,
    "keep": "best",
    "resume": False,
    "exclude_label_issues": False,
    "calibrate": True,
    "onnx": {
        "tolerance": 1e-4,
        "check_cells": 2048,
        "int8": {"quantize": True, "calibration_cells": 512, "max_loss": 0.002, "timing_rounds": 3},
    },
    "distributed": {
        "nproc_per_node": 1,
        "nnodes": 1,
        "rdzv_endpoint": "127.0.0.1:29400",
        "backend": "auto",
        "sync_batchnorm": False,
    },
}


def train_config(**overrides):
    """A :class:`~malaria_pipeline.ml.config.TrainConfig` of :data:`TRAIN_PARAMS` with ``overrides``."""
    from malaria_pipeline.framework.parameters import training_config

    return training_config({**TRAIN_PARAMS, **overrides})


def tiny_data(count=48, size=16, seed=0):
    """TrainData where parasitized cells (class 0) carry a dark spot and uninfected ones don't."""
    import torch

    from malaria_pipeline.ml.train import TrainData

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(120, 200, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 2
    images[labels == 0, :, 5:9, 5:9] = 10
    split = count * 3 // 4
    return TrainData(
        train_images=images[:split],
        train_labels=labels[:split],
        valid_images=images[split:],
        valid_labels=labels[split:],
        mean=[0.6] * 3,
        std=[0.2] * 3,
        class_names=["Parasitized", "Uninfected"],
    )


def tiny_tables(count=24, size=16, seed=0):
    """What the training, LR-finder and evaluation nodes read, made by hand: ``(image_tensors, image_index,
    data_split, normalization_stats)``. As in :func:`tiny_data`, parasitized cells (even rows) carry a dark
    spot; the first half of the rows is ``train``, the third quarter ``validation``, the last ``test``."""
    import pandas as pd
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(120, 200, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    images[0::2, :, 5:9, 5:9] = 10
    labels = ["Parasitized" if i % 2 == 0 else "Uninfected" for i in range(count)]
    paths = [
        f"cell_images/{label}/C{i % 3}P{i % 3}ThinF_IMG_1_cell_{i}.png" for i, label in enumerate(labels)
    ]
    index = pd.DataFrame(
        {"path": paths, "label": labels, "patient_id": [f"C{i % 3}P{i % 3}ThinF" for i in range(count)]}
    )
    subsets = (
        ["train"] * (count // 2)
        + ["validation"] * (count // 4)
        + ["test"] * (count - count // 2 - count // 4)
    )
    split = pd.DataFrame({"path": paths, "subset": subsets})
    train = images[: count // 2].double() / 255
    stats = {
        "mean": train.mean(dim=(0, 2, 3)).tolist(),
        "std": train.std(dim=(0, 2, 3), correction=0).tolist(),
    }
    return images, index, split, stats


def tiny_bundle(image_size: int = 16) -> dict:
    """The saved form of an untrained ResNet-9 of width 4 (seeded), as the training node returns it."""
    import torch

    from malaria_pipeline.ml.model_io import model_bundle
    from malaria_pipeline.ml.models import CellClassifier, build_network

    torch.manual_seed(0)
    network = build_network("resnet9", image_size=image_size, width=4)
    classifier = CellClassifier(
        network=network,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        class_names=["Parasitized", "Uninfected"],
        image_size=image_size,
    )
    return model_bundle(classifier, architecture="resnet9", network_args={"width": 4})


def with_onnx_graph(bundle: dict) -> dict:
    """``bundle`` with its exported ONNX graph, as ``inference_model`` loads a model that training exported:
    what answers on ``inference.runtime: onnx``."""
    from malaria_pipeline.ml.model_io import load_model
    from malaria_pipeline.ml.onnx_export import export_onnx

    return {
        **bundle,
        "onnx_graph": export_onnx(load_model(bundle), bundle),
        "onnx_graph_source": "model.onnx",
    }


def changed(bundle: dict, **keys) -> dict:
    """``bundle`` with other ``keys`` (a temperature, an operating point), exported again where it had an
    ONNX graph: a graph keeps the temperature it was exported with."""
    plain = {key: value for key, value in bundle.items() if not key.startswith("onnx_graph")}
    return with_onnx_graph({**plain, **keys}) if "onnx_graph" in bundle else {**plain, **keys}


def reference_logits(bundle: dict, images) -> torch.Tensor:
    """Logits of ``uint8`` images under the training preprocessing, written out here rather than taken
    from the package: the bundle's network rebuilt from its weights, in float64, on
    ``(pixels / 255 - mean) / std``."""
    import torch

    from malaria_pipeline.ml.models import build_network

    network = build_network(
        bundle["architecture"],
        num_classes=len(bundle["class_names"]),
        image_size=bundle["image_size"],
        **bundle["network_args"],
    )
    network.load_state_dict(bundle["state_dict"])
    network = network.double().eval()
    mean = torch.tensor(bundle["mean"], dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(bundle["std"], dtype=torch.float64).view(1, -1, 1, 1)
    with torch.no_grad():
        return network((images.double() / 255 - mean) / std)


def reference_proba(bundle: dict, images, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities of :func:`reference_logits` divided by ``temperature``. What serving must agree with."""
    return (reference_logits(bundle, images) / temperature).softmax(dim=1)


def reference_tta_proba(bundle: dict, images, temperature: float = 1.0) -> torch.Tensor:
    """Test-time augmentation written out: :func:`reference_proba` of the 4 quarter turns (``torch.rot90``)
    of the images and of their mirror images (``torch.flip``), averaged by hand over the 8."""
    import torch

    views = [
        torch.rot90(mirrored, turns, dims=[2, 3])
        for mirrored in (images, torch.flip(images, dims=[3]))
        for turns in range(4)
    ]
    probabilities = reference_proba(bundle, torch.cat(views), temperature)  # one network, all 8 views
    total = torch.zeros((len(images), len(bundle["class_names"])), dtype=torch.float64)
    for k in range(8):
        total += probabilities[k * len(images) : (k + 1) * len(images)]
    return total / 8


def reference_grad_cam(classifier, layer, images, target):
    """Grad-CAM as Selvaraju et al. define it, written out with a forward hook and autograd: ``S×S`` maps of
    ``target`` (one class index, or one per image), each scaled to [0, 1] by its maximum."""
    import torch
    import torch.nn.functional as F

    saved = []
    handle = layer.register_forward_hook(lambda module, inputs, output: saved.append(output))
    try:
        logits = classifier(images)
    finally:
        handle.remove()
    activations = saved[0]
    chosen = logits.gather(1, torch.as_tensor(target).expand(len(images))[:, None])
    gradients = torch.autograd.grad(chosen.sum(), activations)[0]
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / peak, torch.zeros_like(cam))


def hand_overlay(image, heatmap) -> torch.Tensor:
    """0.55 of the cell and 0.45 of the heatmap in matplotlib's jet colours, ``uint8, S×S×3``."""
    import torch
    from matplotlib import colormaps

    colour = torch.from_numpy(colormaps["jet"](heatmap.double().numpy())[..., :3])
    return (255 * (0.55 * image.permute(1, 2, 0).double() / 255 + 0.45 * colour)).round().to(torch.uint8)


def png_pixels(data: bytes) -> torch.Tensor:
    """``uint8, 3×H×W`` of an RGB PNG or JPEG file, decoded by Pillow here (not by the package)."""
    import torch

    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


# Runtime parameters of a tiny `training` run on :data:`SMALL_PATIENTS` (with ingestion.image_size=16): a
# stratified split, so that every subset has both classes, and one epoch of a ResNet-9 of width 4.
TINY = {
    "preprocessing": {
        "split": {"strategy": "stratified", "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}
    },
    "training": {"width": 4, "epochs": 1, "batch_size": 8},
}


class KedroProject:
    """This project's conf/ copied into ``root``; runs write there only (the working directory).

    The one way the tests run a pipeline: :meth:`run`, a ``KedroSession`` as ``kedro run --params``
    opens it, with the project's catalog, hooks and MLflow tracking. The fixtures ``kedro_project``
    (one per test) and ``module_kedro_project`` (one per test module) of conftest.py make one.
    """

    def __init__(self, root: Path):
        from kedro.framework.startup import bootstrap_project

        self.root = root
        root.mkdir(parents=True)
        shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
        shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
        for folder in ("conf/local", "data", "src"):  # bootstrap_project wants src/; the package is installed
            (root / folder).mkdir()
        # MLflow caches its store per tracking URI, so the relative sqlite:///mlflow.db would keep
        # pointing at the first project's file within one process: give each project its own.
        (root / "conf" / "local" / "mlflow.yml").write_text(
            f"server:\n  mlflow_tracking_uri: sqlite:///{root / 'mlflow.db'}\n"
        )
        bootstrap_project(root)

    def run(
        self, pipeline: str, env: str | None = None, namespaces: list[str] | None = None, **runtime_params
    ):
        """Runs a registered pipeline in a new KedroSession, as ``kedro run [--env] [--namespaces]
        --params`` would."""
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.root, env=env, runtime_params=runtime_params) as session:
            return session.run(pipeline_names=[pipeline], namespaces=namespaces)

    def context(self, **runtime_params):
        """The KedroContext of a new session (its parameters and catalog), without running anything."""
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.root, runtime_params=runtime_params) as session:
            return session.load_context()

    def load(self, name: str, **runtime_params):
        """The latest version of a catalog dataset."""
        return self.context(**runtime_params).catalog.load(name)

    def mlflow_client(self):
        """An MLflow client of this project's tracking store (also made MLflow's current tracking URI)."""
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{self.root / 'mlflow.db'}")
        return mlflow.MlflowClient()


def train_champion(project: KedroProject, cells: Path) -> None:
    """A tiny ``training`` run on :data:`SMALL_PATIENTS` written to ``cells``, promoted to champion (the
    first challenger is), with MLflow's tracking and registry URIs pointed at the project's store
    (callers restore them: :func:`restored_mlflow_state`)."""
    import mlflow

    write_cells(cells, SMALL_PATIENTS)
    project.run("training", ingestion={"source": str(cells), "image_size": 16}, **TINY)
    project.run("promote")
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project.root / 'mlflow.db'}")


def stop_after_epoch(epoch: int, row: dict) -> None:
    """An ``on_epoch_end`` that fails after ``epoch``, as a crash or Ctrl-C would (picklable with
    ``functools.partial``, for a training process of its own)."""
    if row["epoch"] == epoch:
        raise RuntimeError(f"stopped after epoch {epoch}")


def stop_after_epoch_and_linger(epoch: int, seconds: float, row: dict) -> None:
    """As :func:`stop_after_epoch`, but the process then takes ``seconds`` to exit: its peers, failing in
    their next collective, reach the launcher first (the race a slow teardown makes)."""
    if row["epoch"] == epoch:
        atexit.register(time.sleep, seconds)
    stop_after_epoch(epoch, row)


def batch_norm_free_classifier(width: int = 4, image_size: int = 16):
    """A ResNet-9 without batch norm and dropout, seeded: with it, one process on the global batch and
    data-parallel processes on its slices compute the same gradient."""
    import torch
    from torch import nn

    from malaria_pipeline.ml.models import CellClassifier
    from malaria_pipeline.ml.resnet9 import ResNet9

    torch.manual_seed(0)
    network = ResNet9(width=width, dropout=0.0)
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
    return CellClassifier(
        network=network,
        mean=[0.6] * 3,
        std=[0.2] * 3,
        class_names=["Parasitized", "Uninfected"],
        image_size=image_size,
    )


def batch_norm_free_worker(data, config) -> dict:
    """A data-parallel training process (for ``elastic_launch``) that trains
    :func:`batch_norm_free_classifier` and returns its weights and history."""
    import os

    import torch.distributed as dist

    from malaria_pipeline.ml.parallel import DataParallel
    from malaria_pipeline.ml.train import fit

    dist.init_process_group("gloo")
    try:
        parallel = DataParallel(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        result = fit(batch_norm_free_classifier(), data, config, parallel=parallel)
        return {
            "state_dict": {k: v.detach().clone() for k, v in result.classifier.state_dict().items()},
            "history": result.history,
        }
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# MLflow mirrors its tracking URI and active experiment in these, for subprocesses to inherit.
MLFLOW_ENVIRONMENT = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
)


@contextlib.contextmanager
def restored_mlflow_state():
    """MLflow's tracking and registry URIs, active experiment and their environment variables, put back
    as they were on leaving (and any run left open ended, in the store it was opened in).

    ``mlflow.set_tracking_uri``, ``set_registry_uri`` and ``set_experiment`` keep their value in module
    globals and in environment variables: a test that set them, unrestored, sent the next test's runs
    and registered models (and its subprocesses') to its own temporary store. MLflow has no public way
    to read the globals back as "unset", hence the private names.
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    environment = {name: os.environ.get(name) for name in MLFLOW_ENVIRONMENT}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id
    try:
        yield
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id = saved
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def interval_by_hand(called, cells, se, sp, level, between_se=0.0, between_sp=0.0):
    """Lang & Reiczigel's interval (2014; asht::prevSeSp), written out a second time for the tests, with
    the between-patient variances added to the rates': ``se`` and ``sp`` are ``(found, positives)`` and
    ``(passed, negatives)``."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    (found, positives), (passed, negatives) = se, sp
    n_se, n_sp, n_ap = positives + 2, negatives + 2, cells + z * z
    se_, sp_, ap_ = (found + 1) / n_se, (passed + 1) / n_sp, (called + z * z / 2) / n_ap
    centre = (ap_ + sp_ - 1) / (se_ + sp_ - 1)
    shift = 2 * z * z * (centre * se_ * (1 - se_) / n_se - (1 - centre) * sp_ * (1 - sp_) / n_sp)
    variance = (
        ap_ * (1 - ap_) / n_ap
        + centre**2 * (se_ * (1 - se_) / n_se + between_se)
        + (1 - centre) ** 2 * (sp_ * (1 - sp_) / n_sp + between_sp)
    )
    half = z * variance**0.5 / (se_ + sp_ - 1)
    low, high = centre + shift - half, centre + shift + half
    return min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)  # both clipped to [0, 1]


def patients_folder(folder: Path) -> list[Path]:
    """Cells of three patients (``<patient>_IMG_<n>.png``, 60 to 70 each, enough to be called), and one
    truncated file of the second: the ``errors`` of its patient."""
    write_cells(
        folder,
        {
            "PA": {"Parasitized": 30, "Uninfected": 30},
            "PB": {"Uninfected": 70},
            "PC": {"Parasitized": 5, "Uninfected": 60},
        },
        size=16,
        prefix="",
    )
    (folder / "Uninfected" / cell_name("PB", 999)).write_bytes(image_bytes(16, 16)[:60])
    return sorted(folder.rglob("*.png"))


def log_rated_model(project: KedroProject, folder: Path) -> str:
    """The id of a new MLflow run of ``project``'s experiment whose served model (its bundle and ONNX graph)
    is the project's latest ``model`` with reference cells that tell the classes apart (Se and Sp about 0.83 at 0.5, by
    construction): a tiny model's own validation cells give Se + Sp <= 1, which leaves the corrected
    fraction missing. MLflow's tracking URI must point at the project's store."""
    import mlflow
    import torch

    from malaria_pipeline.assess.patients import ReferenceCells
    from malaria_pipeline.pipelines.inference.served_model import log_served_model

    rng = np.random.default_rng(0)
    reference = ReferenceCells.of(
        np.r_[np.ones(300, bool), np.zeros(300, bool)],
        np.r_[rng.uniform(0.4, 1.0, 300), rng.uniform(0.0, 0.6, 300)],
        "hand-made reference cells",
    )
    bundle = {**project.load("model"), "reference_cells": reference.as_dict(), "count_threshold": 0.5}
    torch.save(bundle, folder / "model.pt")
    # exported again, as a training run exports its model: the graph carries the reference cells
    (folder / "model.onnx").write_bytes(with_onnx_graph(bundle)["onnx_graph"])
    experiment = mlflow.MlflowClient().get_experiment_by_name("malaria-pipeline").experiment_id
    with mlflow.start_run(experiment_id=experiment) as run:
        log_served_model(
            folder / "model.pt", project.context().params["inference"], {"onnx": folder / "model.onnx"}
        )
    return run.info.run_id


LABEL_STUDIO_PYTHON = PROJECT_ROOT / ".venv-label-studio" / "bin" / "python"


@contextlib.contextmanager
def label_studio_server(data_dir: Path, timeout: float = 240.0):
    """The real Label Studio (``make label-studio-install``) on a free port of 127.0.0.1, as ``make
    label-studio`` starts it, its data in ``data_dir``, with the account ``ann@example.org`` and a fresh
    legacy token; stopped on leaving. Yields ``{"url", "username", "password", "token"}``."""
    import secrets
    import subprocess
    import urllib.request

    from malaria_pipeline.framework.label_studio_server import server_environment

    if not LABEL_STUDIO_PYTHON.exists():
        pytest.skip(
            f"no Label Studio environment at {LABEL_STUDIO_PYTHON.parent.parent}: run make label-studio-install"
        )
    account = {
        "username": "ann@example.org",
        "password": secrets.token_hex(8),
        "api_key": secrets.token_hex(20),
    }
    port = free_port()
    environment = server_environment(account, data_dir.parent)
    environment["LABEL_STUDIO_BASE_DATA_DIR"] = str(data_dir)
    log = (data_dir.parent / "label-studio.log").open("w")
    server = subprocess.Popen(
        [
            str(LABEL_STUDIO_PYTHON.parent / "label-studio"),
            "start",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-browser",
        ],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(
                    f"Label Studio did not start at {url}: "
                    + (data_dir.parent / "label-studio.log").read_text()[-3000:]
                )
            time.sleep(1)
        yield {
            "url": url,
            "username": account["username"],
            "password": account["password"],
            "token": account["api_key"],
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def label_studio_sdk(server: dict, code: str, request: dict):
    """Runs ``code`` with Label Studio's SDK in its own environment, as a reviewer's script would: ``ls``
    (a client of ``server`` with its token) and ``request`` are given, ``answer`` is returned (JSON)."""
    import json
    import subprocess

    script = (
        "import json, sys\n"
        "from label_studio_sdk import LabelStudio\n"
        f"ls = LabelStudio(base_url={server['url']!r}, api_key={server['token']!r})\n"
        "request = json.load(sys.stdin)\n"
        "answer = None\n" + code + "\njson.dump(answer, sys.stdout, default=str)\n"
    )
    done = subprocess.run(
        [str(LABEL_STUDIO_PYTHON), "-c", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


# A model's reference cells that found 90 of 100 parasitized cells and passed 95 of 100 uninfected ones at
# every threshold in (0.1, 0.9], as a bundle keeps them (``reference_cells``).
REFERENCE_CELLS = {
    "thresholds": [0.9, 0.1],
    "found": [90, 100],
    "false_alarms": [5, 100],
    "positives": 100,
    "negatives": 100,
    "source": "the validation subset",
}
# A spread between patients fitted at the counting threshold 0.5, as a bundle keeps it (``patient_spread``):
# between-patient variances 0.9 · 0.1 · 0.01 (detection) and 0.05 · 0.95 · 0.02 (false alarms).
HAND_SPREAD = {
    "threshold": 0.5,
    "false_alarm": {"mean": 0.05, "rho": 0.02, "patients": 30, "cells": 3000, "events": 150},
    "detection": {"mean": 0.9, "rho": 0.01, "patients": 30, "cells": 3000, "events": 2700},
    "source": "hand",
}
