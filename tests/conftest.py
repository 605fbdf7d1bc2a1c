import pytest


@pytest.fixture(scope="session")
def shapes_corpus(tmp_path_factory):
    """A small 32 px shapes corpus shared by the tests that train."""
    from clip_ping.data.shapes import build_shapes

    out = tmp_path_factory.mktemp("shapes")
    build_shapes(out, num_train=1536, num_val=300, image_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizer():
    """The offline default tokenizer (MiniLM WordPiece), 32 tokens."""
    from clip_ping.tokenizer import get_tokenizer

    return get_tokenizer(context_length=32)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """512 shapes pairs: the CLIP-PING tests embed them with both teachers."""
    from clip_ping.data.shapes import build_shapes

    out = tmp_path_factory.mktemp("small_shapes")
    build_shapes(out, num_train=512, num_val=64, image_size=32, seed=2)
    return out


@pytest.fixture(scope="session")
def shapes_banks(small_corpus, tmp_path_factory):
    """Image (EfficientNet-Lite0 at 64 px) and text (MiniLM) banks of ``small_corpus``
    with top-5 neighbour tables."""
    from clip_ping.bank import build_bank, mine_bank
    from clip_ping.data.loader import DataSpec

    root = tmp_path_factory.mktemp("shapes_banks")
    spec = DataSpec(str(small_corpus / "train.csv"))
    build_bank(spec, "image", root / "image", image_size=64, workers=0, progress=False)
    build_bank(spec, "text", root / "text", workers=0, progress=False)
    for modality in ("image", "text"):
        mine_bank(root / modality, k=5, backend="exact", progress=False)
    return root
