from tvr.experiments.cli import main

raise SystemExit(main())
