"""Virtual disks on the host: image files, copy-on-write overlays, the DNLFS format, tools.

Only re-exports live here. ``denali.devices.disk.device`` is the device (hypercalls and
``vm.disks``); ``denali.cli.disk`` is ``denali disk``; ``docs/disk-format.md`` describes
every on-disk format.
"""

from denali.devices.disk.spec import MODES, DiskMode, DiskSpec, check_disk_name, parse_disk_arg
from denali.devices.disk.tools import Listing, create_image, list_image, pack_directory

__all__ = (
    "MODES",
    "DiskMode",
    "DiskSpec",
    "Listing",
    "check_disk_name",
    "create_image",
    "list_image",
    "pack_directory",
    "parse_disk_arg",
)
