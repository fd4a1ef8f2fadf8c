"""DiskSpec and the --disk syntax."""

from __future__ import annotations

import pytest

from denali.devices.disk import DiskSpec, parse_disk_arg
from denali.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "path", "name", "mode", "overlay"),
    [
        ("base.img", "base.img", "base", "overlay-discard", None),
        ("images/base.img:ro", "images/base.img", "base", "ro", None),
        ("root=images/base.img:rw", "images/base.img", "root", "rw", None),
        ("data.img:discard", "data.img", "data", "overlay-discard", None),
        ("data.img:keep", "data.img", "data", "overlay-keep", "data.img.overlay"),
        ("d=data.img:keep=/var/vm1.ovl", "data.img", "d", "overlay-keep", "/var/vm1.ovl"),
        ("/abs/with:colon.img", "/abs/with:colon.img", "with:colon", "overlay-discard", None),
        ("./a=b.img", "./a=b.img", "a=b", "overlay-discard", None),
    ],
)
def test_parse(text: str, path: str, name: str, mode: str, overlay: str | None) -> None:
    spec = parse_disk_arg(text)
    assert spec.path == path
    assert spec.mode == mode
    assert spec.overlay_path == overlay
    if name.replace("-", "").replace(".", "").replace("_", "").isalnum():
        assert spec.disk_name == name
    else:
        with pytest.raises(ConfigError, match="NAME=PATH"):
            spec.disk_name  # noqa: B018


def test_index_substitution() -> None:
    spec = parse_disk_arg("data=base.img:keep=vm{i}.ovl", index=3)
    assert spec.overlay_path == "vm3.ovl"
    assert spec.name == "data"


@pytest.mark.parametrize("text", ["", ":ro", "x=:rw", "d.img:keep=", "bad name=d.img:rw"])
def test_parse_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        spec = parse_disk_arg(text)
        spec.disk_name  # noqa: B018


@pytest.mark.parametrize("name", ["", "-x", "a" * 32, "sp ace", "slash/", "\u00e9"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        DiskSpec("x.img", name=name)


def test_spec_validation() -> None:
    assert DiskSpec("x.img", name="a" * 31).disk_name == "a" * 31
    with pytest.raises(ConfigError):
        DiskSpec("x.img", mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DiskSpec("x.img", mode="ro", overlay="o")
    with pytest.raises(ConfigError):
        DiskSpec("x.img", mode="rw", overlay_dir="/tmp")
    with pytest.raises(ConfigError):
        DiskSpec("")
