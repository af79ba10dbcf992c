"""Knowledge graphs with entity text: triples, entity descriptions, relation names, categories, linked text.

The folder layout is KG-BERT's (Yao et al., 2019), in which ``shared/data/wn18rr_text`` and
``umls_text`` come::

    entities.txt         one entity id a line (optional: else the ids of the description file)
    entity2text.txt      id<TAB>description   (WN18RR: "lemma, gloss"; UMLS: a short name)
    entity2textlong.txt  id<TAB>long description (UMLS: a Wikipedia paragraph)
    relations.txt        one relation id a line (optional: else the ids of relation2text.txt)
    relation2text.txt    id<TAB>relation name in words
    train.tsv, dev.tsv, test.tsv   head<TAB>relation<TAB>tail

:func:`read_kg` reads it into a :class:`KnowledgeGraph` (ids mapped to indices, triples as int arrays);
every malformed line, a triple naming an unknown entity or relation, and an entity without a
description is a :class:`~reprlab.errors.DataFormatError` naming the file and line.

Entity categories come from a TSV ``id<TAB>category`` (:func:`read_categories`) or, for WN18RR, from
WordNet's lexicographer files (:func:`read_wordnet_lexnames`, Debian's ``wordnet-base``).

:func:`link_mentions` builds text with entity mentions from the KG's own descriptions (the rule is in
its docstring).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reprlab.errors import DataFormatError, ReprlabError

SPLITS = ("train", "dev", "test")
WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "s": "data.adj", "r": "data.adv"}
# WordNet 3.0's lexicographer files by number (lexnames(5WN); Debian ships the table in the man page only)
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()


@dataclass
class KnowledgeGraph:
    """Entities and relations (ids, texts) and the triples of each split as (n, 3) int64 arrays of
    (head, relation, tail) indices."""

    entities: list[str]
    entity_text: list[str]
    relations: list[str]
    relation_text: list[str]
    triples: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self):
        self.entity_index = {e: i for i, e in enumerate(self.entities)}
        self.relation_index = {r: i for i, r in enumerate(self.relations)}

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    def split(self, name: str, nonempty: bool = False) -> np.ndarray:
        """The triples of split ``name`` (n, 3); ``nonempty``: a split without triples is an error naming its file."""
        if name not in self.triples:
            raise ReprlabError(f"{self.path}: the knowledge graph has no {name!r} split "
                               f"(it has: {', '.join(self.triples) or 'none'})")
        if nonempty and not len(self.triples[name]):
            raise DataFormatError(f"no triples in the {name!r} split (head<TAB>relation<TAB>tail lines)",
                                  str(Path(self.path or ".") / f"{name}.tsv"))
        return self.triples[name]

    def edges(self, splits=("train",)) -> np.ndarray:
        """The triples of ``splits`` together, (n, 3)."""
        return np.concatenate([self.split(s) for s in splits]) if splits else np.zeros((0, 3), np.int64)

    def digest(self) -> str:
        """SHA-256 of the entity and relation texts (in order): what a cache of their vectors is keyed by."""
        import hashlib

        return hashlib.sha256("\n".join(self.entity_text + ["\t"] + self.relation_text).encode()).hexdigest()

    def neighbours(self, splits=("train",)) -> list[set[int]]:
        """Each entity's neighbours over the triples of ``splits``, either direction."""
        out: list[set[int]] = [set() for _ in self.entities]
        for h, _, t in self.edges(splits):
            out[h].add(int(t))
            out[t].add(int(h))
        return out


def _lines(path: Path):
    """(line number, text) of a UTF-8 file; a line that is not UTF-8 is a DataFormatError at that line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)",
                                      str(path), n) from None


def _tsv(path: Path, columns: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a TSV file; a line with another number of fields is a DataFormatError."""
    rows = []
    for n, line in _lines(path):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != columns or not all(p.strip() for p in parts[: columns - 1]):
            raise DataFormatError(f"expected {columns} tab-separated fields, got {len(parts)}: {line[:80]!r}",
                                  str(path), n)
        rows.append((n, [p.strip() for p in parts]))
    return rows


def _ids(path: Path) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in _lines(path) if line.strip()]


def _texts(path: Path, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, (key, text) in _tsv(path, 2):
        if key in out:
            raise DataFormatError(f"{what} {key!r} is described twice", str(path), n)
        if not text:
            raise DataFormatError(f"{what} {key!r} has an empty description", str(path), n)
        out[key] = text
    return out


def _ordered(folder: Path, list_name: str, texts: dict[str, str], text_file: Path, what: str) -> list[str]:
    """The ids of ``list_name`` (every one needs a text), or of the text file when the list is absent."""
    path = folder / list_name
    if not path.is_file():
        return list(texts)
    ids, seen = [], set()
    for n, key in _ids(path):
        if key in seen:
            raise DataFormatError(f"{what} {key!r} is listed twice", str(path), n)
        if key not in texts:
            raise DataFormatError(f"{what} {key!r} has no description in {text_file.name}", str(path), n)
        seen.add(key)
        ids.append(key)
    return ids


def read_kg(folder: str | Path, descriptions: str = "entity2text.txt", splits=SPLITS) -> KnowledgeGraph:
    """Read a KG folder (layout in the module docstring). ``descriptions`` names the entity text file
    (``entity2textlong.txt`` for UMLS' paragraphs); ``splits`` the triple files to read (absent ones
    are skipped, but at least one must exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReprlabError(f"{folder}: not a knowledge-graph folder (expected {descriptions}, relation2text.txt "
                           "and train/dev/test.tsv)")
    ent_file, rel_file = folder / descriptions, folder / "relation2text.txt"
    for path in (ent_file, rel_file):
        if not path.is_file():
            raise ReprlabError(f"{folder}: {path.name} is missing")
    ent_text, rel_text = _texts(ent_file, "entity"), _texts(rel_file, "relation")
    kg = KnowledgeGraph(entities=(ents := _ordered(folder, "entities.txt", ent_text, ent_file, "entity")),
                        entity_text=[ent_text[e] for e in ents],
                        relations=(rels := _ordered(folder, "relations.txt", rel_text, rel_file, "relation")),
                        relation_text=[rel_text[r] for r in rels], path=folder)
    for name in splits:
        path = folder / f"{name}.tsv"
        if path.is_file():
            kg.triples[name] = read_triples(path, kg)
    if not kg.triples:
        raise ReprlabError(f"{folder}: no triple files ({', '.join(f'{s}.tsv' for s in splits)})")
    return kg


def read_triples(path: str | Path, kg: KnowledgeGraph) -> np.ndarray:
    """head<TAB>relation<TAB>tail lines as (n, 3) indices of ``kg``; unknown names are errors at their line."""
    rows = []
    for n, (h, r, t) in _tsv(Path(path), 3):
        for name, index, what in ((h, kg.entity_index, "entity"), (r, kg.relation_index, "relation"),
                                  (t, kg.entity_index, "entity")):
            if name not in index:
                raise DataFormatError(f"unknown {what} {name!r} (not in the knowledge graph's "
                                      f"{'entities' if what == 'entity' else 'relations'})", str(path), n)
        rows.append((kg.entity_index[h], kg.relation_index[r], kg.entity_index[t]))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def read_categories(path: str | Path, kg: KnowledgeGraph | None = None) -> dict[str, str]:
    """id<TAB>category lines; with ``kg``, an id it does not have is an error at its line."""
    out = {}
    for n, (key, category) in _tsv(Path(path), 2):
        if kg is not None and key not in kg.entity_index:
            raise DataFormatError(f"unknown entity {key!r}", str(path), n)
        if not category:
            raise DataFormatError(f"entity {key!r} has an empty category", str(path), n)
        out[key] = category
    return out


def lemma_of(text: str) -> str:
    """The lemma of a WN18RR description "lemma, gloss" (the text before the first comma)."""
    return text.split(",", 1)[0].strip()


def gloss_of(text: str) -> tuple[int, str]:
    """(character offset, gloss) of a "lemma, gloss" description; the whole text when there is no comma."""
    cut = text.find(", ")
    return (0, text) if cut < 0 else (cut + 2, text[cut + 2:])


def read_wordnet_lexnames(kg: KnowledgeGraph, wordnet_dir: str | Path = WORDNET_DIR) -> dict[str, str]:
    """Entity id -> WordNet lexicographer file (``noun.animal``, ``verb.motion``, ...) from the WordNet
    database (Debian's ``wordnet-base``: ``data.noun`` ... and ``lexnames``). WN18RR ids are synset
    offsets, which repeat across parts of speech: the synset whose words hold the entity's lemma wins."""
    folder = Path(wordnet_dir)
    if not (folder / "data.noun").is_file():
        raise ReprlabError(f"{folder}: no WordNet database (data.noun, data.verb, ...); install it with "
                           "`apt-get install wordnet-base` or give its folder")
    names = dict(enumerate(LEXNAMES))
    wanted = set(kg.entities)
    by_offset: dict[str, list[tuple[set[str], str]]] = {}
    by_gloss: dict[str, str] = {}  # Debian's data.verb is patched and some verb offsets moved: match by gloss
    for fname in sorted(set(WORDNET_FILES.values())):
        with open(folder / fname, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                parts = line.split()
                lexname = names[int(parts[1])]
                by_gloss.setdefault(_gloss_key(line.split(" | ", 1)[-1]), lexname)
                if parts[0] in wanted:
                    words = {w.split("(")[0].lower().replace("_", " ") for w in parts[4:4 + 2 * int(parts[3], 16):2]}
                    by_offset.setdefault(parts[0], []).append((words, lexname))
    out = {}
    for e, text in zip(kg.entities, kg.entity_text):
        lemma = lemma_of(text).lower().replace("_", " ")
        match = [lex for words, lex in by_offset.get(e, []) if lemma in words]
        if not match and _gloss_key(gloss_of(text)[1]) in by_gloss:
            match = [by_gloss[_gloss_key(gloss_of(text)[1])]]
        if match:
            out[e] = match[0]
    return out


def _gloss_key(gloss: str) -> str:
    return " ".join(gloss.lower().split())[:60]


@dataclass
class LinkedText:
    """A text with entity mentions: (char start, char end, entity index) spans, sorted, not overlapping."""

    entity: int  # the entity the text describes
    text: str
    mentions: list[tuple[int, int, int]]


def _surface_pattern(lemma: str) -> re.Pattern:
    words = [re.escape(w) for w in lemma.lower().replace("_", " ").split()]
    return re.compile(r"\b" + r"[\s-]+".join(words) + r"(?:s|es)?\b", re.IGNORECASE)


def link_mentions(kg: KnowledgeGraph, splits=("train",), min_chars: int = 3) -> list[LinkedText]:
    """Each entity's description with mentions of its neighbours linked, by lemma matching.

    The rule: in the gloss of entity e (the text after "lemma, "; e's own lemma is never searched), a
    whole-word, case-insensitive occurrence of the lemma of a neighbour n of e over the triples of
    ``splits`` (plain plural "s"/"es" allowed; hyphens and spaces alike) is a mention of n. Lemmas
    shorter than ``min_chars`` characters and lemmas equal to e's own are skipped; overlapping matches
    keep the longest (then the earliest). Restricting candidates to the neighbourhood is what keeps a
    common word like "plant" from being linked to the wrong one of its many synsets. Texts without a
    mention are left out.
    """
    neighbours = kg.neighbours(splits)
    patterns: dict[int, re.Pattern] = {}
    out = []
    for e, text in enumerate(kg.entity_text):
        start, gloss = gloss_of(text)
        own = lemma_of(text).lower()
        found = []
        for n in sorted(neighbours[e]):
            lemma = lemma_of(kg.entity_text[n])
            if len(lemma) < min_chars or lemma.lower() == own:
                continue
            pattern = patterns.get(n) or patterns.setdefault(n, _surface_pattern(lemma))
            found += [(m.start() + start, m.end() + start, n) for m in pattern.finditer(gloss)]
        found.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
        kept: list[tuple[int, int, int]] = []
        for s in found:
            if all(s[1] <= k[0] or s[0] >= k[1] for k in kept):
                kept.append(s)
        if kept:
            out.append(LinkedText(e, text, sorted(kept)))
    return out


def held_out_entities(kg: KnowledgeGraph) -> list[int]:
    """Entities with triples in dev/test but none in train: the entity-category benchmark's held-out side."""
    in_train = np.zeros(kg.num_entities, dtype=bool)
    in_train[kg.split("train")[:, [0, 2]].ravel()] = True
    other = np.zeros(kg.num_entities, dtype=bool)
    for name in ("dev", "test"):
        if name in kg.triples:
            other[kg.triples[name][:, [0, 2]].ravel()] = True
    return np.flatnonzero(other & ~in_train).tolist()


def write_linked_text(path: str | Path, texts: list[LinkedText], kg: KnowledgeGraph) -> None:
    """JSONL: {"entity": id, "text": str, "mentions": [[start, end, entity id], ...]} (character offsets)."""
    import json

    from reprlab.io import atomic_open

    with atomic_open(path) as f:
        for t in texts:
            f.write(json.dumps({"entity": kg.entities[t.entity], "text": t.text,
                                "mentions": [[a, b, kg.entities[n]] for a, b, n in t.mentions]}) + "\n")


def read_linked_text(path: str | Path, kg: KnowledgeGraph) -> list[LinkedText]:
    """The JSONL of :func:`write_linked_text`; an unknown entity or a span outside its text is an error at its line."""
    import json

    out = []
    for n, line in _lines(Path(path)):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, mentions = row["text"], [(int(a), int(b), str(e)) for a, b, e in row.get("mentions", [])]
            entity = str(row.get("entity", ""))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"expected {{\"text\", \"mentions\": [[start, end, entity], ...]}} ({exc})",
                                  str(path), n) from exc
        for a, b, e in mentions:
            if e not in kg.entity_index:
                raise DataFormatError(f"unknown entity {e!r} in a mention", str(path), n)
            if not 0 <= a < b <= len(text):
                raise DataFormatError(f"mention [{a}, {b}) is outside the text of {len(text)} characters",
                                      str(path), n)
        if entity and entity not in kg.entity_index:
            raise DataFormatError(f"unknown entity {entity!r}", str(path), n)
        out.append(LinkedText(kg.entity_index.get(entity, -1), text,
                              sorted((a, b, kg.entity_index[e]) for a, b, e in mentions)))
    if not out:
        raise DataFormatError("no linked texts", str(path))
    return out


def write_kg(folder: str | Path, kg: KnowledgeGraph) -> Path:
    """Write ``kg`` in the folder layout :func:`read_kg` reads (entities, relations, texts, triple splits)."""
    from reprlab.io import atomic_open

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"entities.txt": [e for e in kg.entities], "relations.txt": [r for r in kg.relations],
             "entity2text.txt": [f"{e}\t{t}" for e, t in zip(kg.entities, kg.entity_text)],
             "relation2text.txt": [f"{r}\t{t}" for r, t in zip(kg.relations, kg.relation_text)]}
    for name, rows in kg.triples.items():
        files[f"{name}.tsv"] = [f"{kg.entities[h]}\t{kg.relations[r]}\t{kg.entities[t]}" for h, r, t in rows]
    for name, lines in files.items():
        with atomic_open(folder / name) as f:
            f.write("".join(line + "\n" for line in lines))
    return folder
