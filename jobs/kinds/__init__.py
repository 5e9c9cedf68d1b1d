"""The built-in job kinds, one module per family; importing this package registers them."""
from . import compute, social, text  # noqa: F401
