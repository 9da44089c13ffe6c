"""Real-object set: every mesh loads as shipped, has an everyday size and is documented with its licence."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.data.real_objects import OBJECTS_DIR, REAL_OBJECTS, load_real_object, load_real_objects

OPEN_LICENCES = {"MIT", "BSD-3-Clause", "BSD-2-Clause", "zlib", "Apache-2.0", "CC0-1.0", "CC-BY-4.0"}


def _body_count(mesh: trimesh.Trimesh) -> int:
    components = trimesh.graph.connected_components(
        mesh.face_adjacency, nodes=np.arange(len(mesh.faces)), min_len=1
    )
    return len(components)


def _sources_rows() -> dict[str, dict[str, str]]:
    """The SOURCES.md table, one dict per row keyed by column header, indexed by object name."""
    lines = [line for line in (OBJECTS_DIR / "SOURCES.md").read_text().splitlines() if line.startswith("| ")]
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| file |"))
    header = [cell.strip() for cell in lines[header_at].strip("|").split("|")]
    rows = {}
    for line in lines[header_at + 2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header) or not cells[0].endswith(".ply"):
            break
        rows[cells[0].removesuffix(".ply")] = dict(zip(header, cells, strict=True))
    return rows


@pytest.fixture(scope="module")
def meshes() -> dict[str, trimesh.Trimesh]:
    return load_real_objects()


def test_every_object_loads_finite_at_an_everyday_size(meshes: dict[str, trimesh.Trimesh]) -> None:
    assert len(REAL_OBJECTS) >= 12
    assert set(meshes) == set(REAL_OBJECTS)
    for name, mesh in meshes.items():
        assert isinstance(mesh, trimesh.Trimesh), name
        assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all(), name
        assert 0.03 <= mesh.extents.max() <= 0.30, (name, mesh.extents)


def test_every_object_is_documented_with_an_open_licence(meshes: dict[str, trimesh.Trimesh]) -> None:
    rows = _sources_rows()
    assert set(rows) == set(REAL_OBJECTS)
    for name, mesh in meshes.items():
        row = rows[name]
        assert row["licence"] in OPEN_LICENCES, (name, row["licence"])
        assert row["copyright holder"] and row["package + version"], name
        # The table describes the shipped file, not some repaired version of it.
        assert int(row["faces"]) == len(mesh.faces), name
        assert row["watertight"] == ("yes" if mesh.is_watertight else "no"), name
        assert int(row["bodies"]) == _body_count(mesh), name
        assert float(row["largest extent cm"]) == pytest.approx(mesh.extents.max() * 100, abs=0.051), name
    licence_files = {path.name for path in (OBJECTS_DIR / "LICENSES").iterdir()}
    sources_text = (OBJECTS_DIR / "SOURCES.md").read_text()
    for licence_file in licence_files:
        assert f"LICENSES/{licence_file}" in sources_text, licence_file
    for licence in {row["licence"] for row in rows.values()}:
        assert any(licence.lower() in licence_file.lower() for licence_file in licence_files), licence


def test_set_holds_open_and_multi_body_meshes(meshes: dict[str, trimesh.Trimesh]) -> None:
    assert any(not mesh.is_watertight for mesh in meshes.values())
    assert any(mesh.is_watertight for mesh in meshes.values())
    assert any(_body_count(mesh) > 1 for mesh in meshes.values())


def test_loading_keeps_the_mesh_as_shipped() -> None:
    raw = trimesh.load(OBJECTS_DIR / "can.ply", file_type="ply", process=False)
    mesh = load_real_object("can")
    np.testing.assert_array_equal(mesh.vertices, raw.vertices)
    np.testing.assert_array_equal(mesh.faces, raw.faces)
    # The can ships vertices that coincide within 1e-8 m; a processing load would have merged them.
    assert len(trimesh.Trimesh(raw.vertices, raw.faces, process=True).vertices) < len(mesh.vertices)


def test_unknown_object_name_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="name"):
        load_real_object("teapot")
