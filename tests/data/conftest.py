import pytest

from megatron_align.data.config import DEFAULT_TOKENIZER
from megatron_align.data.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer(DEFAULT_TOKENIZER)
