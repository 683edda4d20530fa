from sensors.cli import main

raise SystemExit(main())
