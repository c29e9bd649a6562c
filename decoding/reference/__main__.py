from decoding.reference.cli import main

raise SystemExit(main())
