"""conda plugin running autopatch after installs and in `conda doctor`.

The plugin itself is `conda_autopatch.plugin` (it imports conda); `conda_autopatch.runner`
runs the autopatch binary and needs nothing but the standard library.
"""

__version__ = "0.1.0"
