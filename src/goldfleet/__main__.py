from goldfleet.cli.main import main

main()
