"""Reading checkpoint files others wrote, without running them and within bounds.

Everything here reads untrusted files (an SAE from the internet, a model's .pth), so each read is
bounded before anything is allocated:

- JSON configuration files and header lines: at most ``JSON_CAP`` bytes (published ones are a few kB;
  a ``cfg.json`` linked to ``/dev/zero`` ends after a megabyte, not in a MemoryError);
- torch checkpoints: only torch's zip format, every record stored as torch writes it (uncompressed), so
  no record inflates beyond the file's own size (torch inflates a record before it checks its size);
  torch's legacy pre-1.6 format, which allocates what its pickle declares, is refused;
- pickles: torch's weights-only unpickler; a global it does not know is named without unpickling, and
  only classes under ``RECORD_MODULES`` (a ViT-Prisma config) are allowed, each as an inert ``Record``
  of its fields. Anything else (``os.system``, ``builtins.eval``) refuses the file.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch

from atlas.format import AtlasError

JSON_CAP = 1 << 20                        # bytes of a configuration file or header line read at most
RECORD_MODULES = ("vit_prisma.",)         # pickled classes read as inert records (a ViT-Prisma config)
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"   # torch < 1.6's files begin so


def read_capped(path: Path, cap: int, what: str, kind: str) -> bytes:
    """The bytes of ``path`` when it holds at most ``cap``; AtlasError naming ``what`` (and that it is too
    large to be a ``kind``) otherwise. Reads at most cap + 1 bytes, whatever the file's size."""
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise AtlasError(f"{what} {path}: cannot be read ({e.strerror})") from None
    if len(data) > cap:
        size = f"{cap >> 20} MB" if cap >= 1 << 20 else f"{cap >> 10} kB"
        raise AtlasError(f"{what} {path}: larger than {size}, not {kind}")
    return data


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (at most JSON_CAP bytes); AtlasError naming ``what`` otherwise."""
    return _json_object(read_capped(path, JSON_CAP, what, "a configuration file"), f"{what} {path}")


def read_header_line(f, where: str) -> dict:
    """The JSON object on the first line of the open binary file ``f`` (at most JSON_CAP bytes)."""
    line = f.readline(JSON_CAP + 1)
    if len(line) > JSON_CAP or not line.endswith(b"\n"):
        raise AtlasError(f"{where}: its first line is not a JSON header of at most {JSON_CAP // 1024} kB followed by "
                         "a checkpoint")
    return _json_object(line, where)


def _json_object(data: bytes, where: str) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise AtlasError(f"{where}: not JSON ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise AtlasError(f"{where}: not a JSON object")
    return value


def check_torch_archive(source, where) -> None:
    """AtlasError unless ``source`` (a path or a seekable binary file) is a torch zip checkpoint whose
    records are stored uncompressed and no larger, together, than the file itself."""
    if hasattr(source, "seek"):
        start = source.tell()
        head = source.read(len(_LEGACY_MAGIC))
        size = source.seek(0, 2) - start
        source.seek(start)
    else:
        with open(source, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
            size = f.seek(0, 2)
    if head == _LEGACY_MAGIC:
        raise AtlasError(f"{where}: a checkpoint in torch's legacy format (before torch 1.6), which allocates what it "
                         "declares before reading it: load it with torch and save it again (torch.save writes the "
                         "zip format)")
    try:
        with zipfile.ZipFile(source) as z:
            records = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise AtlasError(f"{where}: not a torch checkpoint (torch.save's zip format)") from None
    finally:
        if hasattr(source, "seek"):
            source.seek(start)
    compressed = [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED]
    if compressed or sum(r.file_size for r in records) > size:
        raise AtlasError(f"{where}: refused: its records would inflate beyond the file's {size:,} bytes "
                         f"({(compressed or ['records'])[0]} is compressed; torch.save stores records as they are)")


class Record:
    """What a pickled config class becomes: its constructor arguments and fields, nothing run."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_args"] = (args, kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}        # (dict, slots)
        if isinstance(state, dict):
            self.__dict__.update(state)

    def fields(self) -> dict:
        """Its fields as plain JSON-like values (what a config.json would have said)."""
        out = {}
        for key, value in self.__dict__.items():
            if key.startswith("_"):
                continue
            out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
        return out


def safe_torch_load(source, where=None):
    """``torch.load`` of a checkpoint (a path or a binary file), bounded (``check_torch_archive``) and
    refusing every pickle that would import or call anything but torch's tensor machinery and a class
    under RECORD_MODULES (read as a ``Record``)."""
    where = where or source
    check_torch_archive(source, where)
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass                  # a global the weights-only unpickler does not know: which one, below
    except Exception as e:   # noqa: BLE001 - damaged bytes fail anywhere in torch.load: one line for the user
        raise AtlasError(f"{where}: not a torch checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception as e:   # noqa: BLE001 - not a torch checkpoint at all: one line for the user
        raise AtlasError(f"{where}: not a torch checkpoint ({type(e).__name__})") from None
    refused = [n for n in names if not n.startswith(RECORD_MODULES)]
    if refused or not names:
        raise AtlasError(f"{where}: refused: unpickling it would import or call {', '.join(refused[:3]) or 'code'} "
                         "(a checkpoint needs only tensors; re-save it as a state dict or safetensors)")
    records = [(type(n.rsplit(".", 1)[-1], (Record,), {}), n) for n in names]
    if hasattr(source, "seek"):
        source.seek(0)
    with torch.serialization.safe_globals(records):
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise AtlasError(f"{where}: refused by the weights-only unpickler ({str(e).splitlines()[0][:160]})") from None
        except Exception as e:   # noqa: BLE001 - damaged bytes: one line
            raise AtlasError(f"{where}: not a torch checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def pickled_names(path: Path) -> bytes:
    """The bytes of a torch zip checkpoint's pickle (``data.pkl``, at most JSON_CAP of it), to recognize
    what it holds by its names without unpickling it; empty for anything else."""
    try:
        check_torch_archive(path, path)
        with zipfile.ZipFile(path) as z:
            name = next((r.filename for r in z.infolist() if r.filename.endswith("data.pkl")), None)
            if name is None:
                return b""
            with z.open(name) as f:
                return f.read(JSON_CAP)
    except (AtlasError, OSError, zipfile.BadZipFile):
        return b""


def load_bytes_after_header(f, where: str) -> io.BytesIO:
    """The rest of the open binary file ``f`` (after a header line), once it is known to be a bounded
    torch zip archive that begins right there (nothing between the header and the archive)."""
    start = f.tell()
    check_torch_archive(f, where)
    try:
        with zipfile.ZipFile(f) as z:
            first = min((r.header_offset for r in z.infolist()), default=-1)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise AtlasError(f"{where}: not a torch checkpoint after its header") from None
    if first != start:
        raise AtlasError(f"{where}: its checkpoint does not begin right after its header line")
    f.seek(start)
    return io.BytesIO(f.read())
