"""Exit statuses shared by the ``denali`` subcommands."""

from typing import Final

EXIT_FAULT: Final = 125
"""A guest faulted or a kernel error stopped a VM."""
EXIT_INTERRUPTED: Final = 130
"""Ctrl-C or SIGTERM, after a clean shutdown."""
EXIT_USAGE: Final = 2
"""A usage or configuration error."""
