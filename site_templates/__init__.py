"""Jinja templates and static assets of the atlas site (rendered by atlas.website)."""
