import sys

from kaon.cli import main

sys.exit(main())
