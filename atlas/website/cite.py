"""How to cite an atlas and its units: CITATION.cff and BibTeX."""
from __future__ import annotations

import datetime as _dt
import json

from .. import __version__
from ..format import FORMAT_VERSION


PAPER_BIBTEX = """@article{ghiasi2022vision,
  title   = {What do Vision Transformers Learn? A Visual Exploration},
  author  = {Ghiasi, Amin and Kazemi, Hamid and Borgnia, Eitan and Reich, Steven and Shu, Manli and
             Goldblum, Micah and Wilson, Andrew Gordon and Goldstein, Tom},
  journal = {arXiv preprint arXiv:2212.06727},
  year    = {2022}
}"""


def bibtex_escape(text: str) -> str:
    """Escape text for a BibTeX field."""
    out = str(text)
    for ch in "\\{}":
        out = out.replace(ch, {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}"}[ch])
    for ch in "&%$#_":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def citation_cff(info: dict, manifest: dict) -> str:
    """CITATION.cff for the atlas, with the method's paper as a reference."""
    released = (manifest.get("updated") or _dt.date.today().isoformat())[:10]
    authors = info.get("authors") or [{"name": "ViT Atlas contributors"}]
    lines_ = ["cff-version: 1.2.0",
              "message: If you use this atlas, please cite it as below, and the paper whose method built it.",
              "type: dataset", f"title: {json.dumps(info['name'])}", f"version: {json.dumps(str(info['version']))}",
              f"date-released: {released}", "authors:"]
    for author in authors:
        author = {"name": author} if isinstance(author, str) else author
        first = True
        for key, value in author.items():
            lines_.append(f"  {'- ' if first else '  '}{key}: {json.dumps(value)}")
            first = False
    if info.get("url"):
        lines_.append(f"url: {json.dumps(info['url'])}")
    if info.get("license"):
        lines_.append(f"license: {json.dumps(info['license'])}")
    lines_ += ["references:", "  - type: article",
               '    title: "What do Vision Transformers Learn? A Visual Exploration"',
               "    authors:"]
    for family, given in (("Ghiasi", "Amin"), ("Kazemi", "Hamid"), ("Borgnia", "Eitan"), ("Reich", "Steven"),
                          ("Shu", "Manli"), ("Goldblum", "Micah"), ("Wilson", "Andrew Gordon"), ("Goldstein", "Tom")):
        lines_ += [f"      - family-names: {family}", f"        given-names: {given}"]
    lines_ += ['    journal: "arXiv preprint arXiv:2212.06727"', "    year: 2022", ""]
    return "\n".join(lines_)


def atlas_bibtex(info: dict, manifest: dict, key: str) -> str:
    """BibTeX for the atlas as a whole."""
    year = (manifest.get("updated") or _dt.date.today().isoformat())[:4]
    authors = " and ".join((a if isinstance(a, str) else a.get("name", "")) for a in info.get("authors", [])) \
        or "{ViT Atlas contributors}"
    fields = [f"  title        = {{{bibtex_escape(info['name'])}: a neuron atlas of vision transformers}}",
              f"  author       = {{{authors}}}", f"  year         = {{{year}}}",
              f"  version      = {{{bibtex_escape(info['version'])}}}",
              f"  note         = {{Built with ViT Atlas {__version__}, atlas format {FORMAT_VERSION}}}"]
    if info.get("url"):
        fields.append(f"  howpublished = {{\\url{{{info['url']}}}}}")
    return "@misc{" + key + ",\n" + ",\n".join(fields) + "\n}"


def bibtex_key(info: dict) -> str:
    """A BibTeX key for the atlas: letters and digits of its name and version."""
    return "".join(ch for ch in f"{info['name']}v{info['version']}" if ch.isalnum()) or "atlas"
