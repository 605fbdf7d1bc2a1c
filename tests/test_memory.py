import torch

from clip_ping.memory import StudentMemory


def test_memory_returns_the_latest_write_and_masks_unwritten_rows():
    memory = StudentMemory(num_samples=10, dim=4)
    first = torch.randn(3, 4)
    memory.update(torch.tensor([1, 4, 7]), first, -first)
    newer = torch.randn(1, 4)
    memory.update(torch.tensor([4]), newer, newer * 2)
    image, valid = memory.lookup("image", torch.tensor([4, 1, 2]))
    text, _ = memory.lookup("text", torch.tensor([4, 7]))
    assert valid.tolist() == [True, True, False]
    torch.testing.assert_close(image[0], newer[0], atol=1e-3, rtol=1e-3)  # float16 storage
    torch.testing.assert_close(image[1], first[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(text[1], -first[2], atol=1e-3, rtol=1e-3)
    assert torch.count_nonzero(image[2]) == 0


def test_memory_round_trips_through_a_state_dict():
    memory = StudentMemory(num_samples=6, dim=3)
    memory.update(torch.tensor([0, 5]), torch.randn(2, 3), torch.randn(2, 3))
    restored = StudentMemory(num_samples=6, dim=3)
    restored.load_state_dict(memory.state_dict())
    for name, value in memory.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name])
