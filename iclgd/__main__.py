"""`python -m iclgd`: the command line (`iclgd.cli.main`)."""

from iclgd.cli import main

raise SystemExit(main())
