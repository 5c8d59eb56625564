"""Prepare train / holdout slice stacks from a DICOM folder or NIfTI file (see medrecon.priors.prepare)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from medrecon.priors.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
