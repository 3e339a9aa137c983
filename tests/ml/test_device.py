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
