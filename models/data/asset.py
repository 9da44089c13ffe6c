"""Fetch the default rigged hand: the WebXR "generic-hand" glTF from an npm package (MIT licence).

The asset is downloaded with ``npm pack`` into a cache folder on first use and never committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

ASSET_PACKAGE = "@webxr-input-profiles/assets"
ASSET_VERSION = "1.0.20"
ASSET_LICENSE = "MIT"
ASSET_MEMBER = "package/dist/profiles/generic-hand/right.glb"
LICENSE_MEMBER = "package/LICENSE.md"


def default_cache_dir() -> Path:
    """Cache folder for downloaded assets: $HALO_CACHE_DIR or ~/.cache/halo."""
    return Path(os.environ.get("HALO_CACHE_DIR", Path.home() / ".cache" / "halo"))


def asset_description() -> dict[str, str]:
    """Where the default hand comes from, for model cards."""
    return {
        "package": f"{ASSET_PACKAGE}@{ASSET_VERSION}",
        "file": ASSET_MEMBER.removeprefix("package/"),
        "license": ASSET_LICENSE,
    }


def fetch_hand_asset(cache_dir: Path | str | None = None) -> Path:
    """Path of the generic-hand ``right.glb``, running ``npm pack`` into ``cache_dir`` if needed."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"webxr-generic-hand-{ASSET_VERSION}" / "right.glb"
    if target.exists():
        return target
    if shutil.which("npm") is None:
        raise FileNotFoundError("hand asset: npm is not installed; install Node.js or pass --hand-asset PATH")
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / f"webxr-input-profiles-assets-{ASSET_VERSION}.tgz"
    if not tarball.exists():
        subprocess.run(
            ["npm", "pack", f"{ASSET_PACKAGE}@{ASSET_VERSION}", "--silent"],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=600,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        for member, name in ((ASSET_MEMBER, target.name), (LICENSE_MEMBER, "LICENSE.md")):
            source = archive.extractfile(member)
            if source is None:
                raise FileNotFoundError(f"hand asset: {member} missing from {tarball.name}")
            partial = target.parent / (name + ".part")
            partial.write_bytes(source.read())
            partial.replace(target.parent / name)
    return target
