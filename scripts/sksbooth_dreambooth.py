"""A1111 / Forge entry point: the WebUI runs every scripts/*.py of extensions/<any name>/.

It registers core/ as the package `sksbooth` (see the folder's __init__.py). The
DreamBooth tab itself comes with the WebUI-extension issue.
"""

import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "__init__.py"))
