"""Labelled sentences for classification: the two-column TSV files of SST-2 and AG News.

Both files are ``text<TAB>label``, one example a line:

* SST-2 (GLUE): a header ``sentence<TAB>label``, labels ``0`` (negative) / ``1`` (positive);
* AG News: no header, label names (``World``, ``Sports``, ``Business``, ``Sci/Tech``).

:func:`read_classification_tsv` reads either (a first line whose label column is ``label`` is taken
as the header) and returns the texts with their labels as strings; :meth:`LabelledTexts.label_ids`
numbers the labels in a fixed order (the one given, or sorted). A line without exactly one tab, with
an empty text or an empty label is a :class:`~reprlab.errors.DataFormatError` naming the file and line.

>>> data = read_classification_tsv("sst2/test.tsv")                    # doctest: +SKIP
>>> len(data), data.names()                                            # doctest: +SKIP
(872, ['0', '1'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from reprlab.errors import DataFormatError

HEADER_LABEL = "label"


@dataclass
class LabelledTexts:
    """Texts and their labels (strings, as in the file), in file order."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    source: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def names(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted(set(self.labels))

    def label_ids(self, names: Sequence[str] | None = None) -> list[int]:
        """Each label's index in ``names`` (default :meth:`names`); a label outside ``names`` is an error."""
        names = list(names) if names is not None else self.names()
        index = {n: i for i, n in enumerate(names)}
        missing = sorted(set(self.labels) - set(index))
        if missing:
            raise DataFormatError(f"labels {missing} are not among {names}", self.source)
        return [index[y] for y in self.labels]

    def subset(self, rows: Sequence[int]) -> "LabelledTexts":
        return LabelledTexts([self.texts[i] for i in rows], [self.labels[i] for i in rows], self.source)


def read_classification_tsv(path: str | Path) -> LabelledTexts:
    """``text<TAB>label`` lines (an optional ``...<TAB>label`` header line is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file", str(path))
    out = LabelledTexts(source=str(path))
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataFormatError(f"expected 'text<TAB>label', found {len(parts)} column(s)", str(path), n)
            text, label = parts[0].strip(), parts[1].strip()
            if n == 1 and label.lower() == HEADER_LABEL:
                continue
            if not text:
                raise DataFormatError("empty text", str(path), n)
            if not label:
                raise DataFormatError("empty label", str(path), n)
            out.texts.append(text)
            out.labels.append(label)
    if not out.texts:
        raise DataFormatError("no labelled lines", str(path))
    return out
