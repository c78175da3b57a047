from streamer.capture.cli import main

raise SystemExit(main())
