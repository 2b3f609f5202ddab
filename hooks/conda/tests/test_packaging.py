"""pyproject.toml: the entry point conda loads plugins from resolves to the plugin module."""

import importlib.metadata
import sys
import unittest

from .helpers import EnvTestCase, use_fake_conda, write_dist_info

try:
    import tomllib  # noqa: F401
except ImportError:  # Python < 3.11
    tomllib = None


@unittest.skipIf(tomllib is None, "reading pyproject.toml needs Python 3.11+ (tomllib)")
class EntryPoint(EnvTestCase):
    def test_conda_group_names_the_plugin_module(self):
        write_dist_info(self.tmp / "site")
        sys.path.insert(0, str(self.tmp / "site"))
        self.addCleanup(sys.path.remove, str(self.tmp / "site"))
        found = [
            ep
            for ep in importlib.metadata.entry_points(group="conda")
            if ep.value.startswith("conda_autopatch")
        ]
        self.assertEqual([(ep.name, ep.value) for ep in found], [("autopatch", "conda_autopatch.plugin")])
        use_fake_conda()
        sys.modules.pop("conda_autopatch.plugin", None)
        module = found[0].load()
        for hook in ("conda_post_commands", "conda_health_checks"):
            self.assertTrue(hasattr(getattr(module, hook), "conda_impl"), hook)
