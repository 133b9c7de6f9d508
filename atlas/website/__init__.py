"""The atlas's website: a static website rendered from an atlas folder through the Jinja templates in
``site_templates/`` (by default into ``<atlas>/site/``).

``urls`` says where every file lives, ``collect`` reads what the pages show, ``context`` turns it into
each page's template context, ``search`` writes the static search index, ``cite`` the citation files,
and ``build.render`` does it all: collect, then write.
"""
from .build import render

__all__ = ["render"]
