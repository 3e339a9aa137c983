"""The checkpoint store: the last epoch of a training run, replaced atomically, with its metadata."""

import torch

from malaria_pipeline.ml.checkpoint import CheckpointStore


def test_no_checkpoint_loads_as_none(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    assert store.path == tmp_path / "checkpoint" / "last.pt"
    assert store.load() is None


def test_the_last_state_saved_comes_back_with_the_metadata_of_the_store(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint", metadata={"mlflow_run_id": "abc"})
    store.save({"epoch": 1, "weights": torch.zeros(3)})
    store.save({"epoch": 2, "weights": torch.ones(3)})
    state = store.load()
    assert state["epoch"] == 2 and torch.equal(state["weights"], torch.ones(3))
    assert state["metadata"] == {"mlflow_run_id": "abc"}
    # one file, replaced: no partial file is left beside it
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == ["last.pt"]
    assert CheckpointStore(tmp_path / "checkpoint").load()["epoch"] == 2  # another store of the same folder


# Mutants found by mutmut (docs/mutation-testing.md)


def test_a_store_in_a_folder_not_made_yet_makes_it(tmp_path):
    store = CheckpointStore(tmp_path / "runs" / "2026" / "checkpoint")
    store.save({"epoch": 1})
    assert store.load()["epoch"] == 1


class _Unsafe:
    """Any class but the tensors and containers that ``weights_only`` allows."""


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    import pickle

    import pytest

    store = CheckpointStore(tmp_path / "checkpoint")
    store.save({"epoch": 1, "payload": _Unsafe()})
    with pytest.raises(pickle.UnpicklingError):
        store.load()


def test_a_pickled_object_is_refused_even_where_the_environment_turns_weights_only_off(tmp_path, monkeypatch):
    # torch.load's default becomes weights_only=False under this variable; the store asks for True itself.
    import pickle

    import pytest

    store = CheckpointStore(tmp_path / "checkpoint")
    store.save({"epoch": 1, "payload": _Unsafe()})
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        store.load()
