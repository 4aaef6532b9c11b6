"""Entry point when a host loads this folder as a package (ComfyUI's custom_nodes/<any name>/).

The core lives in core/ but is only ever imported as `sksbooth`: a generic name such
as `core` would collide with other extensions in the host's sys.modules.
"""

import importlib.util
import os
import sys

PACKAGE = "sksbooth"


def register_package():
    """Make `import sksbooth` load this folder's core/, unless a sksbooth is already loaded."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    core = os.path.join(os.path.dirname(os.path.abspath(__file__)), "core")
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(core, "__init__.py"),
                                                  submodule_search_locations=[core])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


register_package()

# The ComfyUI nodes come with their own issue; until then this folder loads and registers none.
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
