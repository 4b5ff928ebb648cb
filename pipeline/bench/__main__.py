"""`python -m pipeline.bench`: see pipeline.bench."""
import sys

from pipeline.bench.digits import main

sys.exit(main())
