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
    assert sum(p.numel() for g in groups for p in g.parameters()) == sum(
        p.numel() for p in network.parameters()
    )


def test_resnet9_width_sets_the_channels():
    network = build_network("resnet9", width=16)
    assert network.prep[0].out_channels == 16 and network.head[-1].in_features == 128


def test_small_images_get_a_stem_without_downsampling():
    small, large = build_network("resnet18", image_size=64), build_network("resnet18", image_size=224)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.stride == (2, 2) and isinstance(large.maxpool, torch.nn.MaxPool2d)
    assert (
        small.conv1.weight.shape == large.conv1.weight.shape == (64, 3, 7, 7)
    )  # pretrained weights still fit


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


# Mutants found by mutmut (docs/mutation-testing.md)


def test_normalize_scales_uint8_pixels_to_the_unit_interval_then_standardizes():
    from malaria_pipeline.ml.models import Normalize

    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = Normalize([0.2, 0.4, 0.6], [0.5, 0.25, 0.2])(images)
    pixels = [0.0, 0.2, 1.0]  # 0, 51 and 255 out of 255
    expected = [[(p - m) / s for p in pixels] for m, s in ((0.2, 0.5), (0.4, 0.25), (0.6, 0.2))]
    assert out.dtype == torch.float32
    assert out[0, :, 0].flatten().tolist() == pytest.approx(sum(expected, []), abs=1e-6)


def test_a_new_classifier_computes_in_float32_and_set_speed_switches_the_memory_format():
    from malaria_pipeline.ml.models import CellClassifier

    torch.manual_seed(0)
    network = build_network("resnet9", width=4).eval()
    classifier = CellClassifier(
        network=network,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        class_names=["Parasitized", "Uninfected"],
        image_size=16,
    ).eval()
    assert classifier.channels_last is False and classifier.bf16 is False
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        expected = network((images.double() / 255 - 0.5).div(0.25).float())
        assert torch.allclose(classifier(images), expected, atol=1e-5)
    conv = network.prep[0].weight
    classifier.set_speed(channels_last=True, bf16=False)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    classifier.set_speed(channels_last=False, bf16=False)
    assert conv.is_contiguous()


def test_resnet9_has_the_reference_layers_and_parameter_count():
    from malaria_pipeline.ml.resnet9 import ResNet9

    def conv_bn(cin, cout):  # 3x3 convolution without bias, batch norm's weight and bias
        return 9 * cin * cout + 2 * cout

    for network, width, classes in (
        (ResNet9(), 64, 2),
        (build_network("resnet9", num_classes=3, width=8), 8, 3),
    ):
        w = width
        expected = (
            conv_bn(3, w)
            + conv_bn(w, 2 * w)
            + 2 * conv_bn(2 * w, 2 * w)
            + conv_bn(2 * w, 4 * w)
            + conv_bn(4 * w, 8 * w)
            + 2 * conv_bn(8 * w, 8 * w)
            + 8 * w * classes
            + classes
        )
        assert sum(p.numel() for p in network.parameters()) == expected
    assert build_network("resnet9").prep[0].out_channels == 64  # the reference's width by default
    with pytest.raises(ValueError) as error:
        build_network("resnet9", pretrained=True)
    assert (
        str(error.value)
        == "There are no pretrained ResNet-9 weights: set training.pretrained=false for resnet9"
    )
    network = build_network("resnet9", width=4)
    x = torch.randn(2, 3, 32, 32)
    # a 2x2 max-pool after each of layer1..layer3: 32 -> 4 pixels a side
    assert network.layer3(network.layer2(network.layer1(network.prep(x)))).shape == (2, 32, 4, 4)
    network.train()
    torch.manual_seed(0)
    assert not torch.equal(network(x), network(x))  # dropout in the head
    network.eval()
    assert torch.equal(network(x), network(x))


def test_a_residual_block_adds_its_input():
    from malaria_pipeline.ml.resnet9 import Residual

    block = Residual(2)
    block.block = torch.nn.Identity()
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(block(x), 2 * x)


@pytest.mark.parametrize(
    ("image_size", "small_input_stem", "stride"),
    [(128, None, (2, 2)), (127, None, (1, 1)), (224, True, (1, 1)), (64, False, (2, 2))],
)
def test_the_stem_is_small_below_128_pixels_unless_told(image_size, small_input_stem, stride):
    network = build_network("resnet18", image_size=image_size, small_input_stem=small_input_stem)
    assert network.conv1.stride == stride and isinstance(network.maxpool, torch.nn.Identity) == (
        stride == (1, 1)
    )


def test_the_offline_message_names_the_architecture_and_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    # where torchvision's weights look it up (not torch.hub's name)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(
        PretrainedWeightsError,
        match=r"^Could not download the ImageNet weights of resnet34 "
        r"\(<urlopen error no route to host>\); this machine may be offline\.",
    ):
        build_network("resnet34", pretrained=True)


def test_groups_never_frozen_keep_their_batch_norm_training():
    from malaria_pipeline.ml.models import apply_frozen_mode, set_frozen

    network = build_network("resnet9", width=4).train()
    groups = layer_groups(network, "resnet9")
    apply_frozen_mode(groups)
    assert network.prep[1].training
    set_frozen(groups, True)
    apply_frozen_mode(groups)
    assert not network.prep[1].training and network.head.training


def _tiny_untrained_classifier(temperature: float = 1.0):
    from malaria_pipeline.ml import load_model
    from tests.helpers import tiny_bundle

    bundle = {**tiny_bundle(), "temperature": temperature}
    images = torch.randint(
        0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    images[:, :, 2:6, 9:12] = 10  # an off-centre spot, so that the symmetries see different cells
    return bundle, load_model(bundle), images


def test_tta_is_the_mean_over_the_quarter_turns_and_mirror_images_written_out():
    from tests.helpers import reference_proba, reference_tta_proba

    bundle, classifier, images = _tiny_untrained_classifier()
    expected = reference_tta_proba(bundle, images)
    assert not torch.allclose(
        expected, reference_proba(bundle, images), atol=1e-4
    )  # TTA changes something here
    # batches of 2 over 5 images: the averaging is per image, whatever the batch
    assert torch.allclose(
        classifier.predict_proba(images, batch_size=2, tta=True).double(), expected, atol=1e-5
    )
    assert torch.allclose(
        classifier.predict_proba(images, batch_size=2).double(), reference_proba(bundle, images), atol=1e-5
    )


def test_the_temperature_divides_the_logits_with_and_without_tta_and_calibrated_false_ignores_it():
    from tests.helpers import reference_proba, reference_tta_proba

    bundle, classifier, images = _tiny_untrained_classifier(temperature=0.3)
    assert torch.allclose(
        classifier.predict_proba(images).double(), reference_proba(bundle, images, 0.3), atol=1e-5
    )
    assert torch.allclose(
        classifier.predict_proba(images, tta=True).double(),
        reference_tta_proba(bundle, images, 0.3),
        atol=1e-5,
    )
    assert torch.allclose(
        classifier.predict_proba(images, calibrated=False).double(),
        reference_proba(bundle, images),
        atol=1e-5,
    )
    assert torch.allclose(
        classifier(images).double().softmax(dim=1), reference_proba(bundle, images), atol=1e-5
    )


def test_the_eight_symmetries_are_distinct_and_closed_under_a_quarter_turn():
    from malaria_pipeline.ml.models import square_symmetries

    image = torch.arange(9).view(1, 1, 3, 3)  # no symmetry of its own: its 8 images are all different
    views = {tuple(v.flatten().tolist()) for v in square_symmetries(image)}
    by_hand = {
        tuple(torch.rot90(m, k, dims=[2, 3]).flatten().tolist())
        for m in (image, torch.flip(image, dims=[3]))
        for k in range(4)
    }
    assert len(views) == 8 and views == by_hand


def test_tta_averages_the_views_probabilities_not_their_logits():
    # An untrained network's views agree, so averaging their logits or their probabilities gives nearly
    # the same answer. A head scaled 300-fold, its bias set so that neither class wins on average, makes
    # each view confident in its own way: the two averages then differ far beyond the tolerance.
    from malaria_pipeline.ml import load_model
    from tests.helpers import reference_logits, reference_tta_proba

    bundle, _, images = _tiny_untrained_classifier()
    state = {
        **bundle["state_dict"],
        "head.3.weight": bundle["state_dict"]["head.3.weight"] * 300,
        "head.3.bias": torch.zeros(2),
    }
    bundle = {**bundle, "state_dict": state}
    views = [torch.rot90(m, k, dims=[2, 3]) for m in (images, torch.flip(images, dims=[3])) for k in range(4)]
    margin = torch.stack([reference_logits(bundle, v) for v in views]).diff(dim=-1).mean().item()
    state["head.3.bias"] = torch.tensor([margin / 2, -margin / 2])
    view_logits = torch.stack([reference_logits(bundle, v) for v in views])
    p_views = view_logits.softmax(dim=-1)[:, :, 0]
    assert (p_views.amax(dim=0) - p_views.amin(dim=0)).max() > 0.9  # the views disagree
    expected = reference_tta_proba(bundle, images)
    assert (expected - view_logits.mean(dim=0).softmax(dim=-1)).abs().max() > 0.1  # logits averaged: far off
    assert torch.allclose(load_model(bundle).predict_proba(images, tta=True).double(), expected, atol=1e-5)
