"""Class hierarchies: which names are above, below and beside a class.

Three sources, one shape (:class:`Hierarchy`): WordNet 3.0 for ImageNet and its variants (the
class index is the position of the class's wnid, a WordNet noun offset, in the sorted list of
the 1000 ImageNet wnids; the database is Debian's ``wordnet-base``, read with nltk's reader and
never downloaded), FGVC-Aircraft's variant -> family -> manufacturer levels, and a user's JSON
object mapping each child name to its parent name.

A node is an id with one or more names (a WordNet synset has several lemmas) and zero or more
parents (a few synsets have two hypernyms).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from vlmclf.data.classnames import load_class_names
from vlmclf.data.layouts_robustness import shipped_wnids
from vlmclf.data.readers import read_json_option_file

WORDNET_DIR = Path("/usr/share/wordnet")
"""Where Debian's ``wordnet-base`` puts the WordNet 3.0 database files."""

AIRCRAFT_LEVELS = ("variant", "family", "manufacturer")


@dataclass(frozen=True)
class Hierarchy:
    """Nodes, their names and parents, and the node of each class index (None: not a node)."""

    names: dict[str, tuple[str, ...]]
    parents: dict[str, tuple[str, ...]]
    class_nodes: tuple[str | None, ...]
    source: str
    _children: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for child, parents in self.parents.items():
            for parent in parents:
                self._children.setdefault(parent, []).append(child)

    def ancestors(self, node: str) -> dict[str, int]:
        """Every node above ``node``, with its distance (1 = a parent)."""
        found: dict[str, int] = {}
        frontier, depth = [node], 0
        while frontier:
            depth += 1
            frontier = [p for n in frontier for p in self.parents.get(n, ()) if p not in found]
            for parent in frontier:
                found.setdefault(parent, depth)
        return found

    def descendants(self, node: str) -> set[str]:
        """Every node below ``node``."""
        found: set[str] = set()
        stack = [node]
        while stack:
            for child in self._children.get(stack.pop(), ()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found

    def siblings(self, node: str) -> set[str]:
        """Other children of ``node``'s parents."""
        return {c for p in self.parents.get(node, ()) for c in self._children.get(p, ())} - {node}

    def name_index(self) -> dict[str, list[str]]:
        """Lowercased name -> the nodes carrying it."""
        index: dict[str, list[str]] = {}
        for node, names in self.names.items():
            for name in names:
                nodes = index.setdefault(name.lower(), [])
                if node not in nodes:
                    nodes.append(node)
        return index


def from_parent_map(
    parent_of: Mapping[str, str], class_names: Sequence[str], source: str = "--hierarchy"
) -> Hierarchy:
    """A tree from child name -> parent name; names that appear only as parents are internal
    nodes, and a class that appears nowhere is a root with no relatives. Names are one node
    whatever their case ("Golden Retriever" in the class list, "golden retriever" in the file)."""
    node_of = _node_ids([*class_names, *parent_of, *parent_of.values()])
    parents = {node_of[child]: node_of[parent] for child, parent in parent_of.items()}
    _check_acyclic(parents, source)
    names: dict[str, list[str]] = {}
    for name, node in node_of.items():
        names.setdefault(node, []).append(name)
    return Hierarchy(
        names={node: tuple(found) for node, found in names.items()},
        parents={child: (parent,) for child, parent in parents.items()},
        class_nodes=tuple(node_of[name] for name in class_names),
        source=source,
    )


def _node_ids(names: Iterable[str]) -> dict[str, str]:
    """Each name -> its node id: the first spelling met of its lowercased form."""
    first: dict[str, str] = {}
    return {name: first.setdefault(name.strip().lower(), name) for name in names}


def _check_acyclic(parent_of: Mapping[str, str], source: str) -> None:
    for start in parent_of:
        seen, node = {start}, start
        while node in parent_of:
            node = parent_of[node]
            if node in seen:
                raise ValueError(f"{source}: the parents of {start!r} run in a circle at {node!r}")
            seen.add(node)


def load_hierarchy_file(path: str | Path, class_names: Sequence[str]) -> Hierarchy:
    """A JSON object ``{"child": "parent", ...}`` from ``path`` (``--hierarchy FILE``)."""
    path = Path(path)
    data = read_json_option_file(path, "--hierarchy")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping child name to parent name")
    for child, parent in data.items():
        if not isinstance(parent, str) or not parent.strip() or not child.strip():
            raise ValueError(f"{path}: entry {child!r}: the parent must be a non-empty name, "
                             f"not {parent!r}")  # fmt: skip
        if child == parent:
            raise ValueError(f"{path}: entry {child!r} is its own parent")
    return from_parent_map({c.strip(): p.strip() for c, p in data.items()}, class_names, str(path))


def aircraft_hierarchy(
    variant_family: Mapping[str, str],
    family_manufacturer: Mapping[str, str],
    class_names: Sequence[str],
) -> Hierarchy:
    """FGVC-Aircraft's three levels: each variant under its family, each family under its
    manufacturer. Nodes are kept apart by level ("A320" is a variant and the family holding
    it), so an id is ``level:name``; the classes are variants, also named with their maker in
    front ("Boeing 737-300")."""
    missing = [name for name in class_names if name not in variant_family]
    if missing:
        raise ValueError(f"FGVC-Aircraft levels: no family for the classes {missing[:5]}")
    names: dict[str, tuple[str, ...]] = {}
    parents: dict[str, tuple[str, ...]] = {}
    for variant, family in variant_family.items():
        maker = family_manufacturer.get(family)
        # "Boeing 737-300" must read as the variant, not as the longer family name "Boeing 737"
        alias = f"{maker} {variant}" if maker and not variant.startswith(maker) else None
        names[f"variant:{variant}"] = (variant, alias) if alias else (variant,)
        parents[f"variant:{variant}"] = (f"family:{family}",)
    for family in {*variant_family.values(), *family_manufacturer}:
        names[f"family:{family}"] = (family,)
        if family in family_manufacturer:
            parents[f"family:{family}"] = (f"manufacturer:{family_manufacturer[family]}",)
    for manufacturer in set(family_manufacturer.values()):
        names[f"manufacturer:{manufacturer}"] = (manufacturer,)
    return Hierarchy(names, parents, tuple(f"variant:{name}" for name in class_names),
                     "FGVC-Aircraft levels")  # fmt: skip


def read_aircraft_levels(data_dir: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """variant -> family and family -> manufacturer from FGVC-Aircraft's ``data/`` folder
    (``images_{variant,family,manufacturer}_{split}.txt``: "<image id> <name>" lines), joined
    on the image id over every split present."""
    folder = Path(data_dir)
    levels: dict[str, dict[str, str]] = {level: {} for level in AIRCRAFT_LEVELS}
    for level in AIRCRAFT_LEVELS:
        files = sorted(folder.glob(f"images_{level}_*.txt"))
        if not files:
            raise ValueError(f"{folder}: no images_{level}_*.txt (FGVC-Aircraft's data folder?)")
        for file in files:
            levels[level].update(_aircraft_lines(file))
    variant_family = _join_levels(levels["variant"], levels["family"], folder)
    family_manufacturer = _join_levels(levels["family"], levels["manufacturer"], folder)
    return variant_family, family_manufacturer


def _aircraft_lines(path: Path) -> dict[str, str]:
    found = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        image_id, _, name = line.strip().partition(" ")
        if not name.strip():
            raise ValueError(f"{path}:{number}: expected '<image id> <name>', got {line!r}")
        found[image_id] = name.strip()
    return found


def _join_levels(lower: dict[str, str], upper: dict[str, str], folder: Path) -> dict[str, str]:
    parent_of: dict[str, str] = {}
    for image_id, name in lower.items():
        parent = upper.get(image_id)
        if parent is None:
            continue
        if parent_of.setdefault(name, parent) != parent:
            raise ValueError(
                f"{folder}: {name!r} is under both {parent_of[name]!r} and {parent!r} "
                f"(image {image_id})"
            )
    return parent_of


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted)."""
    return shipped_wnids("imagenet")


def wnids_for_classes(class_names: Sequence[str]) -> list[str] | None:
    """Each class's wnid when the classes are ImageNet's (the full list in order, or a subset
    such as ImageNet-R's 200 by name); None when some name is not an ImageNet class."""
    wnids = imagenet_wnids()
    for list_name in ("imagenet", "imagenet_first_synonym"):
        names = load_class_names(list_name)
        if list(class_names) == names:
            return list(wnids)
        position = {}
        for index, name in enumerate(names):
            position.setdefault(name.lower(), index)
        if all(name.lower() in position for name in class_names):
            return [wnids[position[name.lower()]] for name in class_names]
    return None


def wordnet_available(folder: str | Path = WORDNET_DIR) -> str | None:
    """None when WordNet can be read, else why not (for skips and errors)."""
    try:
        import nltk  # noqa: F401
    except ImportError:
        return "WordNet needs nltk: pip install 'vlmclf[errors]'"
    if not (Path(folder) / "data.noun").is_file():
        return f"no WordNet 3.0 database in {folder}: apt-get install wordnet-base"
    return None


_LEXNAMES = (  # noqa: SIM905 - the file's names in its order, 45 in a few lines
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
"""WordNet 3.0's 45 lexicographer files (its ``lexnames`` file, which Debian does not ship)."""
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


@cache
def open_wordnet(folder: str = str(WORDNET_DIR)) -> Any:
    """nltk's WordNet reader on a local WordNet 3.0 folder; nothing is downloaded."""
    why = wordnet_available(folder)
    if why:
        raise ValueError(why)
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class LocalWordNet(WordNetCorpusReader):
        def open(self, fileid: str) -> Any:
            if fileid == "lexnames":
                return io.StringIO("".join(
                    f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n"
                    for i, name in enumerate(_LEXNAMES)
                ))  # fmt: skip
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            return None  # this is WordNet 3.0 itself: no mapping to another version

    if folder not in nltk.data.path:
        nltk.data.path.append(folder)  # nltk reads only below the folders it is told to trust
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return LocalWordNet(folder, None)


def wordnet_hierarchy(
    wnids: Sequence[str], class_names: Sequence[str], folder: str | Path = WORDNET_DIR
) -> Hierarchy:
    """The classes' synsets with every hypernym above them, every hyponym below them and the
    other hyponyms of their parents; a class node is named by its class name and its lemmas."""
    wordnet = open_wordnet(str(folder))
    names: dict[str, set[str]] = {}
    parents: dict[str, tuple[str, ...]] = {}

    def add(synset: Any) -> str:
        node = synset.name()
        if node not in names:
            names[node] = {lemma.replace("_", " ") for lemma in synset.lemma_names()}
            above = synset.hypernyms() + synset.instance_hypernyms()
            parents[node] = tuple(h.name() for h in above)
        return node

    class_nodes = []
    for wnid, class_name in zip(wnids, class_names, strict=True):
        synset = _synset_of(wordnet, wnid)
        class_nodes.append(add(synset))
        names[synset.name()].add(class_name)
        for above in _closure(synset, lambda s: s.hypernyms() + s.instance_hypernyms()):
            add(above)
        for below in _closure(synset, lambda s: s.hyponyms() + s.instance_hyponyms()):
            add(below)
        for parent in synset.hypernyms():
            for sibling in parent.hyponyms():
                add(sibling)
    return Hierarchy(
        names={node: tuple(sorted(found)) for node, found in names.items()},
        parents={node: tuple(p for p in ps if p in names) for node, ps in parents.items()},
        class_nodes=tuple(class_nodes),
        source=f"WordNet 3.0 ({folder})",
    )


def _synset_of(wordnet: Any, wnid: str) -> Any:
    if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
        raise ValueError(f"{wnid!r} is not a WordNet noun id (n + 8 digits)")
    try:
        return wordnet.synset_from_pos_and_offset("n", int(wnid[1:]))
    except Exception as err:  # nltk raises WordNetError or a bare error on a bad offset
        raise ValueError(f"{wnid}: no such noun synset in WordNet 3.0 ({err})") from err


def _closure(synset: Any, step: Any) -> Iterable[Any]:
    seen: set[str] = set()
    stack = list(step(synset))
    while stack:
        current = stack.pop()
        if current.name() in seen:
            continue
        seen.add(current.name())
        yield current
        stack.extend(step(current))
