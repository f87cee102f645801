import sys

from datamove.cli import main

sys.exit(main())
