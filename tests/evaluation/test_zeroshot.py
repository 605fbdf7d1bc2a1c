"""Zero-shot metrics on hand-made embeddings, and the template ensemble."""

import pytest
import torch
import torch.nn.functional as F

from clip_ping.evaluation.zeroshot import class_embeddings, zero_shot_metrics


def test_known_answer_with_per_class_recall():
    classes = torch.eye(3)
    # class 0: 2 of 2 right; class 1: 1 of 2 right; class 2: 0 of 1 right
    images = torch.eye(3)[[0, 0, 1, 2, 1]]
    labels = [0, 0, 1, 1, 2]
    metrics = zero_shot_metrics(images, classes, labels)
    assert metrics["acc1"] == pytest.approx(3 / 5)
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["acc5"] == 1.0  # 3 classes: everything is in the top 5


def test_top5_and_ties():
    # 7 classes on a line of decreasing similarity to the image; the true class ranks 6th.
    classes = F.normalize(torch.tensor([[1.0, 0.1 * i] for i in range(7)]), dim=-1)
    image = torch.tensor([[1.0, 0.0]])
    assert zero_shot_metrics(image, classes, [5])["acc5"] == 0.0
    assert zero_shot_metrics(image, classes, [4])["acc5"] == 1.0
    # Two identical class embeddings: the tie counts against the image for both labels.
    tied = torch.eye(2)[[0, 0, 1]]
    for label in (0, 1):
        assert zero_shot_metrics(torch.eye(2)[[0]], tied, [label])["acc1"] == 0.0


def test_labels_beyond_the_class_names_are_an_error():
    with pytest.raises(ValueError, match="3 class names"):
        zero_shot_metrics(torch.eye(3), torch.eye(3), [0, 1, 3])


class BagOfWords:
    """A fake model: a prompt's embedding is the sum of one-hot vectors of its words."""

    vocab = ["a", "photo", "of", "cat", "dog"]
    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def tokenizer(self, texts):
        ids = [[self.vocab.index(w) for w in t.rstrip(".").split()] for t in texts]
        width = max(map(len, ids))
        return torch.tensor([row + [-1] * (width - len(row)) for row in ids])  # -1: padding

    def encode_text(self, tokens, normalize=False):
        out = torch.zeros(len(tokens), len(self.vocab) + 1)
        out.scatter_add_(1, tokens % (len(self.vocab) + 1), torch.ones(tokens.shape))
        out = out[:, : len(self.vocab)]  # drop the padding column
        return F.normalize(out, dim=-1) if normalize else out


def test_class_embedding_is_the_renormalised_mean_of_normalised_prompts():
    model = BagOfWords()
    templates = ["a photo of a {}.", "a {}."]
    got = class_embeddings(model, model.tokenizer, ["cat", "dog"], templates)
    # "a photo of a cat" → (2, 1, 1, 1, 0)/sqrt(7); "a cat" → (1, 0, 0, 1, 0)/sqrt(2)
    first = torch.tensor([2.0, 1, 1, 1, 0]) / 7**0.5
    second = torch.tensor([1.0, 0, 0, 1, 0]) / 2**0.5
    torch.testing.assert_close(got[0], F.normalize((first + second) / 2, dim=0))
    assert got[1, 3] == 0 and got[1, 4] > 0  # "dog" prompts, not "cat"
    with pytest.raises(ValueError, match="'{}'"):
        class_embeddings(model, model.tokenizer, ["cat"], ["a photo"])
