"""The KG reader (reprlab.text.kg): folders, linked mentions, WordNet lexnames, file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reprlab.errors import DataFormatError, ReprlabError
from reprlab.text.kg import (
    LinkedText,
    held_out_entities,
    link_mentions,
    read_categories,
    read_kg,
    read_linked_text,
    read_wordnet_lexnames,
    write_kg,
    write_linked_text,
)

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_KG = DATA / "tiny_kg"
LEXNAMES_SAMPLE = DATA / "wn18rr_lexnames_sample.tsv"  # 299 WN18RR ids -> lexname, derived from wordnet-base


def test_a_kg_folder_reads_into_indices():
    kg = read_kg(TINY_KG)
    assert (kg.num_entities, kg.num_relations) == (15, 3)
    assert {k: len(v) for k, v in kg.triples.items()} == {"train": 14, "dev": 2, "test": 2}
    h, r, t = kg.split("train")[0]
    assert (kg.entities[h], kg.relations[r], kg.entities[t]) == ("e01", "_hypernym", "e00")
    assert kg.entity_text[0].startswith("animal, ")
    assert held_out_entities(kg) == [kg.entity_index["e13"]]  # lion: only in dev/test
    with pytest.raises(ReprlabError, match="no 'valid' split"):
        kg.split("valid")


def test_write_kg_round_trips(tmp_path):
    kg = read_kg(TINY_KG)
    again = read_kg(write_kg(tmp_path / "copy", kg))
    assert again.entities == kg.entities and again.entity_text == kg.entity_text
    assert all(np.array_equal(again.triples[s], kg.triples[s]) for s in kg.triples)
    assert again.digest() == kg.digest()


def test_mentions_are_linked_to_neighbours_only_by_whole_lemma():
    kg = read_kg(TINY_KG)
    linked = {t.entity: t for t in link_mentions(kg)}
    ent = kg.entity_index
    dog = linked[ent["e01"]]
    assert [(dog.text[a:b], kg.entities[n]) for a, b, n in dog.mentions] == [
        ("animal", "e00"), ("barks", "e04"), ("pet", "e03")]  # plural 's' allowed; the lemma "dog" itself skipped
    # "hermit" mentions "animal" and "plant" but has no neighbours: nothing is linked
    assert ent["e14"] not in linked
    # "wolf ... related to the dog": dog is a neighbour only through a dev triple, so not linked from train
    wolf = linked[ent["e12"]]
    assert [kg.entities[n] for _, _, n in wolf.mentions] == ["e00"]
    wolf_dev = {t.entity: t for t in link_mentions(kg, splits=("train", "dev"))}[ent["e12"]]
    assert [kg.entities[n] for _, _, n in wolf_dev.mentions] == ["e00", "e01"]


def test_overlapping_matches_keep_the_longest(tmp_path):
    kg = read_kg(TINY_KG)
    kg.entity_text[kg.entity_index["e03"]] = "pet, a domesticated animal or living organism"
    kg.entity_text[kg.entity_index["e00"]] = "living organism, a thing that lives"
    text = next(t for t in link_mentions(write_kg_and_read(tmp_path, kg)) if t.entity == kg.entity_index["e03"])
    assert [text.text[a:b] for a, b, _ in text.mentions] == ["living organism"]


def write_kg_and_read(tmp: Path, kg):
    return read_kg(write_kg(tmp / "kg", kg))


def test_linked_text_round_trips_and_bad_lines_name_their_line(tmp_path):
    kg = read_kg(TINY_KG)
    texts = link_mentions(kg)
    write_linked_text(tmp_path / "t.jsonl", texts, kg)
    again = read_linked_text(tmp_path / "t.jsonl", kg)
    assert [(t.entity, t.text, t.mentions) for t in again] == [(t.entity, t.text, t.mentions) for t in texts]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a dog", "mentions": [[2, 5, "e01"]]}) + "\n" +
                   json.dumps({"text": "a dog", "mentions": [[2, 50, "e01"]]}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: mention \[2, 50\) is outside the text"):
        read_linked_text(bad, kg)
    bad.write_text("not json\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1"):
        read_linked_text(bad, kg)


def test_malformed_lines_and_duplicates_are_errors_at_their_line(tmp_path):
    import shutil

    folder = Path(shutil.copytree(TINY_KG, tmp_path / "kg"))
    with open(folder / "train.tsv", "a") as f:
        f.write("e01\t_hypernym\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:15: expected 3 tab-separated fields"):
        read_kg(folder)
    shutil.copy(TINY_KG / "train.tsv", folder / "train.tsv")
    with open(folder / "relation2text.txt", "a") as f:
        f.write("_hypernym\tagain\n")
    with pytest.raises(DataFormatError, match=r"relation2text.txt:4: relation '_hypernym' is described twice"):
        read_kg(folder)
    with pytest.raises(ReprlabError, match="not a knowledge-graph folder"):
        read_kg(tmp_path / "nowhere")
    with pytest.raises(DataFormatError, match=r"cats.tsv:1: unknown entity 'zzz'"):
        (tmp_path / "cats.tsv").write_text("zzz\tnoun.animal\n")
        read_categories(tmp_path / "cats.tsv", read_kg(TINY_KG))


def _fake_wordnet(folder: Path) -> Path:
    """A WordNet database of three synsets in the data.* format; the verb's offset is not where the KG says."""
    folder.mkdir()
    (folder / "data.noun").write_text(
        "  1 This software and database is being provided\n"
        "00000100 05 n 02 dog 0 domestic_dog 0 000 | a domesticated animal that barks\n"
        "00000200 03 n 01 animal 0 000 | a living organism\n")
    (folder / "data.verb").write_text("00000300 30 v 01 bark 0 000 | make a barking sound\n")
    (folder / "data.adj").write_text("00000100 00 a 01 doggy 0 000 | like a dog\n")  # same offset as the noun
    (folder / "data.adv").write_text("")
    return folder


def test_wordnet_lexnames_resolve_offsets_by_lemma_and_fall_back_on_the_gloss(tmp_path):
    from reprlab.text.kg import KnowledgeGraph

    kg = KnowledgeGraph(["00000100", "00000200", "00000999", "00000555"],
                        ["dog, a domesticated animal that barks", "animal, a living organism",
                         "bark, make a barking sound", "ghost, nothing known"], ["r"], ["r"])
    lex = read_wordnet_lexnames(kg, _fake_wordnet(tmp_path / "wn"))
    assert lex == {"00000100": "noun.animal", "00000200": "noun.Tops", "00000999": "verb.change"}
    with pytest.raises(ReprlabError, match="apt-get install wordnet-base"):
        read_wordnet_lexnames(kg, tmp_path / "none")


def test_the_shipped_lexname_sample_fits_wn18rr(shared_data):
    kg = read_kg(shared_data("wn18rr_text"))
    sample = read_categories(LEXNAMES_SAMPLE, kg)  # every id is a WN18RR entity
    assert len(sample) == 299 and len(set(sample.values())) > 20
    if not Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("WordNet database absent (apt-get install wordnet-base) for the comparison")
    lex = read_wordnet_lexnames(kg)
    assert {e: lex[e] for e in sample} == sample


def test_linking_on_wn18rr_finds_mentions_in_a_third_of_the_glosses(shared_data):
    kg = read_kg(shared_data("wn18rr_text"))
    linked = link_mentions(kg)
    assert 12_000 < len(linked) < 20_000 and sum(len(t.mentions) for t in linked) > 15_000
    assert isinstance(linked[0], LinkedText)
