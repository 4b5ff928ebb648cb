import sys

from pipeline.remote import main

sys.exit(main())
