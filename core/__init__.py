"""sksbooth: DreamBooth with prior preservation for Stable Diffusion (framework-agnostic core).

The source folder is `core/`; it is always imported as `sksbooth`.
"""

__version__ = "0.1.0"
