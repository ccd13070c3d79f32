from tvr.cli.index import main  # the command line lives in the CLI layer (.importlinter)
raise SystemExit(main())
