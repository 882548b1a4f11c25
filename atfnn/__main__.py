from atfnn.cli import main

raise SystemExit(main())
