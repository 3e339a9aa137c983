import pytest
import torch

from malaria_pipeline.ml.loader import BatchLoader


def _loader(count=10, batch_size=4, seed=0, augment=None):
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 2, 2).contiguous()
    return BatchLoader(
        images=images,
        labels=torch.arange(count),
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        augment=augment,
    )


def test_each_pass_is_a_seeded_permutation_sliced_into_full_batches():
    loader = _loader()
    assert len(loader) == 2  # 10 images, batches of 4: the partial batch of 2 is dropped
    first = [labels.tolist() for _, labels in loader]
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert first == [expected[:4].tolist(), expected[4:8].tolist()]
    second = [labels.tolist() for _, labels in loader]
    assert second != first and len(set(sum(second, []))) == 8
    for images, labels in _loader():
        assert torch.equal(images[:, 0, 0, 0], labels.to(torch.uint8))  # images and labels stay paired


def test_a_set_smaller_than_a_batch_is_one_batch_and_forever_goes_on():
    loader = _loader(count=3, batch_size=8)
    assert len(loader) == 1 and len(next(iter(loader))[1]) == 3
    batches = [labels for _, (_, labels) in zip(range(5), loader.forever())]
    assert len(batches) == 5 and all(sorted(b.tolist()) == [0, 1, 2] for b in batches)


def test_the_augmentation_gets_each_batch_and_the_loaders_generator():
    seen = []

    def augment(images, generator):
        seen.append(generator)
        return 255 - images

    loader = _loader(augment=augment)
    for images, labels in loader:
        assert torch.equal(images[:, 0, 0, 0], 255 - labels.to(torch.uint8))
    assert seen == [loader.generator] * 2


def test_mismatched_or_empty_sets_are_refused():
    with pytest.raises(ValueError, match="as many labels as images"):
        BatchLoader(
            images=torch.zeros(3, 3, 2, 2), labels=torch.zeros(2), batch_size=2, generator=torch.Generator()
        )


# Mutants found by mutmut (docs/mutation-testing.md)


def test_an_empty_set_is_refused_and_a_single_image_is_one_batch():
    with pytest.raises(
        ValueError, match=r"^BatchLoader needs as many labels as images, and some: got 0 and 0$"
    ):
        BatchLoader(
            images=torch.zeros(0, 3, 2, 2), labels=torch.zeros(0), batch_size=4, generator=torch.Generator()
        )
    loader = _loader(count=1, batch_size=4)
    assert len(loader) == 1 and [labels.tolist() for _, labels in loader] == [[0]]
