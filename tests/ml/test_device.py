"""Device choice and the bf16 switch."""

import pytest
import torch

from malaria_pipeline.ml.device import pick_device, use_bf16


def test_auto_picks_a_device_of_this_machine_and_a_missing_one_is_refused_by_name():
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"training.device is 'cuda:3'.*training.device=auto"):
            pick_device("cuda:3")


def test_bf16_auto_follows_the_hardware_and_true_or_false_force_it():
    cpu = torch.device("cpu")
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert use_bf16("auto", cpu) == native
    assert use_bf16(True, cpu) is True and use_bf16(False, cpu) is False
    assert use_bf16("auto", torch.device("mps")) is False
    with pytest.raises(ValueError, match="training.bf16 is 'yes': use auto, true or false"):
        use_bf16("yes", cpu)


@pytest.mark.parametrize(("capability", "native"), [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_auto_on_cuda_asks_the_chosen_device_for_native_bf16(monkeypatch, capability, native):
    asked = []

    def capability_of(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    # a T4 (7.5) emulates bf16, which is_bf16_supported() would count: auto leaves it off there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert use_bf16("auto", torch.device("cuda:1")) is native
    assert asked == [torch.device("cuda:1")]


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_determinism_switch_sets_cudnn_torch_and_cublas(monkeypatch, deterministic):
    from malaria_pipeline.ml.device import set_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", not deterministic)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", deterministic)
    try:
        set_determinism(deterministic)
        assert torch.backends.cudnn.deterministic is deterministic
        assert torch.backends.cudnn.benchmark is (not deterministic)
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        if deterministic:
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        import os

        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if deterministic else None)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(("device", "call"), [("cuda:1", "cuda"), ("mps", "mps"), ("cpu", None)])
def test_synchronize_waits_for_the_device_it_is_given(monkeypatch, device, call):
    from malaria_pipeline.ml.device import synchronize

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(("cuda", d)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    synchronize(torch.device(device))
    expected = {"cuda": [("cuda", torch.device("cuda:1"))], "mps": [("mps", None)], None: []}[call]
    assert calls == expected


# Mutants found by mutmut (docs/mutation-testing.md)


def _fake_accelerators(monkeypatch, cuda_count, mps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda_count", "mps", "expected"), [(2, True, "cuda"), (0, True, "mps"), (0, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_the_cpu(monkeypatch, cuda_count, mps, expected):
    _fake_accelerators(monkeypatch, cuda_count, mps)
    assert pick_device() == pick_device("auto") == pick_device(None) == torch.device(expected)


def test_a_cuda_device_is_accepted_only_if_its_index_exists(monkeypatch):
    _fake_accelerators(monkeypatch, 2, True)
    assert pick_device("cuda") == torch.device("cuda") and pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device("mps") == torch.device("mps")
    for missing in ("cuda:2", "cuda:3", "meta"):
        with pytest.raises(ValueError) as error:
            pick_device(missing)
        assert str(error.value) == (
            f"training.device is {missing!r}, but this machine has no such device. Use training.device=auto "
            "(CUDA, else MPS, else CPU) or cpu."
        )
    _fake_accelerators(monkeypatch, 1, False)
    assert pick_device("cuda") == torch.device("cuda")


def test_bf16_true_holds_on_cuda_and_auto_on_a_cpu_with_amx_alone(monkeypatch):
    assert use_bf16(True, torch.device("cuda:0")) is True and use_bf16(True, torch.device("mps")) is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert use_bf16("auto", torch.device("cpu")) is True


def test_synchronize_waits_for_the_devices_queue(monkeypatch):
    from malaria_pipeline.ml.device import synchronize

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    synchronize(torch.device("cuda:1"))
    synchronize(torch.device("mps"))
    synchronize(torch.device("cpu"))
    assert calls == [("cuda", torch.device("cuda:1")), ("mps", None)]
