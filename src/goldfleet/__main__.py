from goldfleet.cli.fastpath import main

main()
