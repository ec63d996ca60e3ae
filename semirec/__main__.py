from semirec.cli import main

main()
