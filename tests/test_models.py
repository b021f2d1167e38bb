"""Tests of the models layer (encoders, heads, methods) that are too slow or too file-bound for the notebooks."""
import tempfile

from transformers import AutoTokenizer

from elvis_nb.core import repo_root
from elvis_nb.models.encoders import build_synthcxr_tokenizer


def test_synthcxr_tokenizer_regenerates_identically():
    "The committed tokenizer folder is what its recipe produces (the vocabulary builder has no ties, no hashing)."
    committed = AutoTokenizer.from_pretrained(repo_root() / 'data_samples' / 'tokenizer-synthcxr')
    with tempfile.TemporaryDirectory() as d:
        fresh = AutoTokenizer.from_pretrained(build_synthcxr_tokenizer(d))
    assert fresh.get_vocab() == committed.get_vocab()
    text = 'No pneumothorax. Mild cardiomegaly with a smal left effusion.'
    assert fresh(text)['input_ids'] == committed(text)['input_ids']
