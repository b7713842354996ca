from mech.training.cli import main

main()
