from edgeqat.cli import main

raise SystemExit(main())
