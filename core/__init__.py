"""ftx core: the backend-neutral part of ftx (recipe, data, conversion, CLI).

Importing this package must stay cheap and framework-free: backend workers
import pieces of it inside environments that only hold their own framework.
"""

__version__ = "0.1.0"
