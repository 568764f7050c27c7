from rtransfer.cli import main

main()
