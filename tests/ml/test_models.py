import os
import urllib.error

import pytest
import torch
import torchvision

from malaria_pipeline.ml.models import PretrainedWeightsError, build_network, layer_groups


@pytest.mark.parametrize("architecture", ["resnet9", "resnet18", "resnet34", "resnet50"])
def test_every_architecture_gives_two_logits_per_image(architecture):
    network = build_network(architecture, num_classes=2, image_size=32, width=8).eval()
    with torch.no_grad():
        assert network(torch.randn(3, 3, 32, 32)).shape == (3, 2)
    groups = layer_groups(network, architecture)
    assert sum(p.numel() for g in groups for p in g.parameters()) == sum(p.numel() for p in network.parameters())


def test_resnet9_width_sets_the_channels():
    network = build_network("resnet9", width=16)
    assert network.prep[0].out_channels == 16 and network.head[-1].in_features == 128


def test_small_images_get_a_stem_without_downsampling():
    small, large = build_network("resnet18", image_size=64), build_network("resnet18", image_size=224)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.stride == (2, 2) and isinstance(large.maxpool, torch.nn.MaxPool2d)
    assert small.conv1.weight.shape == large.conv1.weight.shape == (64, 3, 7, 7)  # pretrained weights still fit


def test_unknown_architecture_and_pretrained_resnet9_are_refused():
    with pytest.raises(ValueError, match="Unknown training.architecture 'vgg16'"):
        build_network("vgg16")
    with pytest.raises(ValueError, match="no pretrained ResNet-9 weights"):
        build_network("resnet9", pretrained=True)


def test_offline_pretrained_weights_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    expected = os.path.join(str(tmp_path), "hub", "checkpoints", "resnet18-f37072fd.pth")
    with pytest.raises(PretrainedWeightsError, match=f"offline.*{expected}.*training.pretrained=false"):
        build_network("resnet18", pretrained=True)


def test_pretrained_weights_are_read_from_the_torch_cache(tmp_path, monkeypatch):
    # A weights file placed in the cache by hand, as the offline message says: used, not downloaded.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    saved = torchvision.models.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url))
    network = build_network("resnet18", pretrained=True, image_size=32)
    assert torch.equal(network.conv1.weight, saved["conv1.weight"])
    assert torch.equal(network.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])
    assert network.fc.out_features == 2


def test_resnet9_global_max_pool_is_the_max_of_each_channel_and_deterministic_under_ties():
    from malaria_pipeline.ml.resnet9 import GlobalMaxPool

    x = torch.tensor([[[[1.0, 3.0], [3.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    out = GlobalMaxPool()(x)
    assert out.shape == (1, 2, 1, 1) and out.flatten().tolist() == [3.0, 0.0]
    out.sum().backward()
    # amax splits the gradient among tied maxima (the same on every device), where max-pool picks one
    assert x.grad.tolist() == [[[[0.0, 0.5], [0.5, 0.0]], [[0.25] * 2, [0.25] * 2]]]
