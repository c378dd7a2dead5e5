"""The desktop launcher, its icons and the Makefile targets that install them."""

import configparser
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "resources"
SIZES = (16, 32, 48, 64, 128, 256)


def _entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(RES / "workbench.desktop", encoding="utf-8")
    return parser["Desktop Entry"]


def test_desktop_entry_has_required_keys():
    entry = _entry()
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Workbench"
    assert entry["Icon"] == "workbench"
    assert entry["Terminal"] == "false"
    assert entry["StartupWMClass"] == "Workbench"
    for key in ("GenericName", "Comment", "Exec", "Categories", "Keywords"):
        assert entry[key].strip(), key
    for key in ("Categories", "Keywords"):
        assert entry[key].endswith(";"), key


def test_desktop_exec_is_a_declared_entry_point():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {**project.get("scripts", {}), **project.get("gui-scripts", {})}
    command = _entry()["Exec"].split()[0]
    assert command in declared
    assert command in project.get("gui-scripts", {}), "the launcher should start the GUI entry point"


def test_svg_icon_parses():
    root = ET.parse(RES / "icons" / "workbench.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 256 256"


@pytest.mark.parametrize("size", SIZES)
def test_png_icon_has_its_size_and_is_visible(size):
    path = RES / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "workbench.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (size, size)

    from PySide6.QtGui import QImage

    image = QImage(str(path)).convertToFormat(QImage.Format.Format_ARGB32)
    assert not image.isNull()
    assert any(image.pixelColor(x, y).alpha() for y in range(size) for x in range(size)), "fully transparent"


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_installs_and_uninstalls_the_launcher(tmp_path):
    # STAMP= drops the venv prerequisite, so this does not build anything.
    args = ["make", "-s", "-C", str(ROOT), f"DATA_HOME={tmp_path}", "STAMP="]
    subprocess.run([*args, "install-desktop"], check=True, capture_output=True, timeout=60)

    icons = tmp_path / "icons" / "hicolor"
    wanted = [icons / f"{n}x{n}" / "apps" / "workbench.png" for n in SIZES]
    wanted += [icons / "scalable" / "apps" / "workbench.svg", tmp_path / "applications" / "workbench.desktop"]
    for path in wanted:
        assert path.is_file(), path
    installed = (tmp_path / "applications" / "workbench.desktop").read_text(encoding="utf-8")
    assert f"Exec={ROOT / '.venv' / 'bin' / 'workbench'} %U" in installed

    subprocess.run([*args, "uninstall-desktop"], check=True, capture_output=True, timeout=60)
    assert not any(path.exists() for path in wanted)
