"""How to cite an atlas and its units: CITATION.cff and BibTeX."""
from __future__ import annotations

import datetime as _dt

import yaml

from .. import __version__
from ..format import FORMAT_VERSION


# The method's paper, once: the BibTeX and the CITATION.cff reference are made from it.
PAPER = {"title": "What do Vision Transformers Learn? A Visual Exploration", "journal": "arXiv preprint arXiv:2212.06727",
         "year": 2022, "key": "ghiasi2022vision",
         "authors": [("Ghiasi", "Amin"), ("Kazemi", "Hamid"), ("Borgnia", "Eitan"), ("Reich", "Steven"),
                     ("Shu", "Manli"), ("Goldblum", "Micah"), ("Wilson", "Andrew Gordon"), ("Goldstein", "Tom")]}
PAPER_BIBTEX = (f"@article{{{PAPER['key']},\n  title   = {{{PAPER['title']}}},\n"
                f"  author  = {{{' and '.join(f'{family}, {given}' for family, given in PAPER['authors'])}}},\n"
                f"  journal = {{{PAPER['journal']}}},\n  year    = {{{PAPER['year']}}}\n}}")


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
    authors = [{"name": a} if isinstance(a, str) else dict(a) for a in info.get("authors") or ["ViT Atlas contributors"]]
    cff = {"cff-version": "1.2.0",
           "message": "If you use this atlas, please cite it as below, and the paper whose method built it.",
           "type": "dataset", "title": str(info["name"]), "version": str(info["version"]),
           "date-released": released, "authors": authors}
    if info.get("url"):
        cff["url"] = info["url"]
    if info.get("license"):
        cff["license"] = info["license"]
    cff["references"] = [{"type": "article", "title": PAPER["title"],
                          "authors": [{"family-names": f, "given-names": g} for f, g in PAPER["authors"]],
                          "journal": PAPER["journal"], "year": PAPER["year"]}]
    return yaml.safe_dump(cff, sort_keys=False, allow_unicode=True, width=1000)


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
