"""Stand-in for conda in the plugin's unit tests (see ../README.md)."""

__version__ = "0.0.0+fake"
