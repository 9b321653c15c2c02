from edgepack.cli import main

raise SystemExit(main())
