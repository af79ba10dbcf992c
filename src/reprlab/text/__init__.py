"""Text: the tokenizer and the readers/writers for retrieval data (BEIR, MS MARCO, TREC, JSONL)."""

from reprlab.text.tokenizer import Batch, Tokenizer  # noqa: E402,F401
from reprlab.text.beir import BeirDataset, load_beir, write_beir
from reprlab.text.examples import Passage, TrainingExample, read_examples, write_examples
from reprlab.text.trec import read_run, write_run
