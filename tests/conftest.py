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
