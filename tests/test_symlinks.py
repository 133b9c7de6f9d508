"""No writer of ViT Atlas follows a symbolic link out of the folders it owns (issue 29, cases 1 and 2).

Atlases travel as tarballs and git repositories, which keep symlinks. Every command that writes is listed
in WRITERS (a test checks the list against the command line's subcommands); each is run against every
folder it owns replaced by a link to a folder outside holding someone's files: the command is refused in
one line naming the link, or (a folder it does not write) leaves the outside untouched all the same.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import atlas
import build
from atlas.format import ATLAS_FOLDERS, WEBSITE
from tests.conftest import TINY_MODEL
from tests.helpers import assert_refused, digests, plain_http, run_cli, write_spec

READ_ONLY = {"serve", "verify", "plan"}       # commands that write nothing


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A complete atlas built from a spec (every owned folder present), its spec and images."""
    base = tmp_path_factory.mktemp("symlinks")
    spec = write_spec(base, steps=2)
    assert build.main(["run", str(spec)]) == 0
    for name in ATLAS_FOLDERS:                       # folders a finished build may not keep (a probe's state)
        (base / "atlas" / name).mkdir(exist_ok=True)
    return base


def _outside(tmp_path: Path, like: Path | None = None) -> Path:
    """Someone's folder outside the atlas: their files, and (to tempt a sweep) a copy of what the link replaced."""
    outside = tmp_path / "home" / "thesis"
    if like is not None and like.is_dir():
        shutil.copytree(like, outside)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "taxes.pdf").write_bytes(b"%PDF-1.4 mine")
    (outside / "chapter1.tex").write_text("\\section{mine}")
    return outside


def _copy_with_link(built: Path, tmp_path: Path, folder: str) -> tuple[Path, Path, Path]:
    """A copy of the built atlas and spec whose ``folder`` is a link to a folder outside."""
    work = tmp_path / "work"
    shutil.copytree(built, work, symlinks=True)
    spec = work / "spec.toml"
    target = work / "atlas" / folder
    outside = _outside(tmp_path, target)
    shutil.rmtree(target, ignore_errors=True)
    target.symlink_to(outside, target_is_directory=True)
    return work / "atlas", spec, outside


def _atlas_writers(a: Path, spec: Path) -> dict[str, list[str]]:
    images = str(spec.parent / "images")
    return {
        "visualize": ["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "1", "--layers", "0", "--units", "0-3",
                      "--out", str(a)],
        "probe": ["probe", *TINY_MODEL, "--images", images, "--layers", "0", "--units", "0-3", "--k", "2",
                  "--workers", "0", "--out", str(a)],
        "analyze": ["analyze", "token-mixing", *TINY_MODEL, "--images", images, "--limit", "4", "--workers", "0",
                    "--out", str(a)],
        "label": ["label", *TINY_MODEL, "--classes", "--layers", "0", "--workers", "0", "--out", str(a)],
        "map": ["map", str(a)],
        "live": ["live", *TINY_MODEL, "--out", str(a)],
        "run": ["run", str(spec)],
        "finalize": ["finalize", str(a)],
        "render": ["render", str(a)],
        "demo": ["demo", "--out", str(a)],
    }


# every command that writes: atlas writers above; the others write into a folder of their own (below)
WRITERS = {"visualize", "probe", "label", "map", "live", "analyze", "run", "finalize", "render", "demo", "export", "train-sae", "make-dataset",
           "train-demo"}


def test_every_writing_command_is_enumerated():
    commands = set(build.parser()._subparsers._group_actions[0].choices)
    assert commands - READ_ONLY == WRITERS, commands - READ_ONLY ^ WRITERS


@pytest.mark.parametrize("command", ["visualize", "probe", "label", "map", "live", "analyze", "run", "finalize",
                                     "render", "demo"])
@pytest.mark.parametrize("folder", ATLAS_FOLDERS)
def test_no_atlas_writer_follows_a_linked_folder(command, folder, built, tmp_path):
    a, spec, outside = _copy_with_link(built, tmp_path, folder)
    before, inside = digests(outside), digests(a)
    result = run_cli(*_atlas_writers(a, spec)[command])
    assert digests(outside) == before, f"{command} changed the folder {folder} links to"
    if command == "render" and folder != WEBSITE:
        assert result[0] == 0, result             # render writes only the website: the rest is not its to check
    else:
        assert_refused(result, "symbolic link", folder)
        assert digests(a) == inside               # refused before anything was written


def test_render_never_deletes_through_a_linked_website_folder(built, tmp_path):
    """Case 1, as the issue found it: site -> .. (the folder holding the atlas) and site -> ~/thesis."""
    work = tmp_path / "Downloads"
    shutil.copytree(built, work, symlinks=True)
    (work / "taxes.pdf").write_bytes(b"%PDF mine")
    a = work / "atlas"
    shutil.rmtree(a / WEBSITE)
    (a / WEBSITE).symlink_to("..", target_is_directory=True)
    before = digests(work)
    assert_refused(run_cli("render", str(a)), "symbolic link", "--out")
    assert digests(work) == before and (work / "taxes.pdf").exists() and (a / "manifest.json").exists()


def test_a_real_website_folder_without_the_marker_is_not_renders(built, tmp_path):
    a, _, _ = _copy_with_link(built, tmp_path, "logs")
    os.unlink(a / "logs")
    shutil.rmtree(a / WEBSITE)
    (a / WEBSITE).mkdir()
    (a / WEBSITE / "my-notes.txt").write_text("mine")
    assert_refused(run_cli("render", str(a)), "not rendered by ViT Atlas")
    assert (a / WEBSITE / "my-notes.txt").read_text() == "mine"


def test_a_link_deep_inside_an_owned_folder_is_refused_too(built, tmp_path):
    """Case 2's shape one level down: blocks/shards/<model> -> outside, a pack folder -> outside."""
    for inner in ("blocks/shards", "site/data"):
        case = tmp_path / inner.replace("/", "-")
        work = case / "work"
        shutil.copytree(built, work, symlinks=True)
        target = work / "atlas" / inner
        outside = _outside(case, target)
        shutil.rmtree(target)
        target.symlink_to(outside, target_is_directory=True)
        before = digests(outside)
        command = ["render", str(work / "atlas")] if inner.startswith("site") else \
            ["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "1", "--layers", "0", "--units", "0-3",
             "--out", str(work / "atlas")]
        assert_refused(run_cli(*command), "symbolic link", inner.split("/")[-1])
        assert digests(outside) == before


def test_the_manifest_sweeps_only_block_hashes_it_recorded(built, tmp_path):
    """The manifest removes block hashes of shards that are gone, by its own record, not by listing blocks/."""
    work = tmp_path / "work"
    shutil.copytree(built, work, symlinks=True)
    a = work / "atlas"
    mine = a / "blocks" / "notes.txt"
    mine.write_text("mine")
    gone = next((a / "shards").rglob("*.h5"))
    rel = gone.relative_to(a).as_posix()
    gone.unlink()
    from atlas.manifest import write_manifest
    write_manifest(a)
    assert mine.read_text() == "mine" and not (a / "blocks" / f"{rel}.sha256").exists()


# -- writers of folders of their own ---------------------------------------------------------------

def test_export_refuses_a_link_in_its_folder(built, tmp_path):
    pytest.importorskip("pyarrow")
    a = built / "atlas"
    out = tmp_path / "export"
    assert run_cli("export", str(a), "--out", str(out))[0] == 0
    for name in (".export-staging", "units"):
        outside = _outside(tmp_path / name)
        before = digests(outside)
        if (out / name).exists():
            shutil.rmtree(out / name)
        (out / name).symlink_to(outside, target_is_directory=True)
        assert_refused(run_cli("export", str(a), "--out", str(out)), "symbolic link", name)
        assert digests(outside) == before
        os.unlink(out / name)


def test_train_sae_make_dataset_and_train_demo_refuse_links_in_their_folders(built, tmp_path):
    outside = _outside(tmp_path)
    before = digests(outside)
    sae = tmp_path / "sae"                                # an SAE train-sae wrote, whose weights are now a link
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps({"vit_atlas": {"trained_by": "build.py train-sae"}}))
    (sae / "sae_weights.safetensors").symlink_to(outside / "taxes.pdf")
    assert_refused(run_cli("train-sae", *TINY_MODEL, "--images", str(built / "images"), "--layers", "1", "--steps", "5",
                           "--workers", "0", "--out", str(sae)), "symbolic link")
    dataset = tmp_path / "shapes"
    assert run_cli("make-dataset", "--out", str(dataset), "--n", "8")[0] == 0
    shutil.rmtree(dataset / "circle")
    (dataset / "circle").symlink_to(outside, target_is_directory=True)
    assert_refused(run_cli("make-dataset", "--out", str(dataset), "--n", "9"), "symbolic link", "circle")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "demo_weights.json").write_text("{}")
    (weights / "vit_atlas_demo.safetensors").symlink_to(outside / "taxes.pdf")
    assert_refused(run_cli("train-demo", "--out", str(weights), "--epochs", "1", "--n-train", "16"), "symbolic link")
    demo = tmp_path / "demo"                              # an atlas whose demo images folder is a link
    shutil.copytree(built / "atlas", demo, symlinks=True)
    (demo / "images").symlink_to(outside, target_is_directory=True)
    assert_refused(run_cli("demo", "--out", str(demo)), "symbolic link", "images")
    assert digests(outside) == before


def test_the_remote_cache_refuses_a_link_in_its_folder(built, tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_ATLAS_CACHE", str(tmp_path / "cache"))
    outside = _outside(tmp_path)
    before = digests(outside)
    with plain_http(built / "atlas") as url:
        atlas.open(url).close()
        folder = next((tmp_path / "cache").iterdir())
        shutil.rmtree(folder / "files", ignore_errors=True)
        (folder / "files").symlink_to(outside, target_is_directory=True)
        with pytest.raises(atlas.AtlasError, match="symbolic link"):
            atlas.open(url).dataset
    assert digests(outside) == before


def test_a_hostile_website_record_names_nothing_outside(built, tmp_path):
    """The marker's record is read from disk: '../../taxes.pdf' in it is not a file the render may remove."""
    work = tmp_path / "work"
    shutil.copytree(built, work, symlinks=True)
    (work / "taxes.pdf").write_bytes(b"mine")
    marker = work / "atlas" / WEBSITE / ".vit-atlas-website"
    record = json.loads(marker.read_text())
    record["files"]["../../taxes.pdf"] = hashlib.sha256(b"mine").hexdigest()
    marker.write_text(json.dumps(record))
    assert run_cli("render", str(work / "atlas"))[0] == 0
    assert (work / "taxes.pdf").read_bytes() == b"mine"
