from rtransfer.cli.commands import main

main()
