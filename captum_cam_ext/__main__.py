"""``python -m captum_cam_ext``: the ``captum-cam-ext`` command line (see :mod:`captum_cam_ext.cli`)."""

import sys

from captum_cam_ext.cli import main

if __name__ == "__main__":
    sys.exit(main())
