import sys

from genrecast.cli import main

sys.exit(main())
