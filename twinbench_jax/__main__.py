"""`python -m twinbench_jax ...` is the `twinbench` command."""

import sys

from twinbench_jax.cli import main

sys.exit(main())
