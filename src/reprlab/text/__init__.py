"""Text: the tokenizer and the readers/writers for retrieval data (BEIR, MS MARCO, TREC, JSONL)."""
