from mech.directions.cli import main

main()
