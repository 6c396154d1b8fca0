"""A module that fails to import (for the one-line error test)."""

import this_package_does_not_exist  # noqa: F401
