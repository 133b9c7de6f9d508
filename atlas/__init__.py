"""ViT Atlas data: the atlas format, its manifest, the reader API and the website renderer.

    import atlas
    a = atlas.open("atlas-demo")
    u = a.unit("vit_atlas_demo", layer=3, index=42)     # site="ffn" by default
    u.image, u.activation, u.map, u.id
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("vit-atlas")       # one version: the package's (pyproject.toml)
except PackageNotFoundError:                  # a checkout used without installing it
    __version__ = "0+unknown"

from .format import FORMAT_VERSION, SITES, AtlasError, parse_unit_id, unit_id  # noqa: E402
from .reader import Atlas, Dataset, Picture, RelatedUnit, ShardInfo, TopImage, Unit, UnitFlags, UnitStats, open  # noqa: E402,A004

__all__ = ["FORMAT_VERSION", "SITES", "Atlas", "AtlasError", "Dataset", "Picture", "RelatedUnit", "ShardInfo", "TopImage", "Unit",
           "UnitFlags", "UnitStats",
           "open", "parse_unit_id", "unit_id", "__version__"]
