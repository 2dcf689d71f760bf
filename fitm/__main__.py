from fitm.cli import main

main()
