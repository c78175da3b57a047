"""python -m streamer.web ...: the same as `python main.py web ...`."""

import sys

from streamer.web.server import main

sys.exit(main(sys.argv[1:]))
