from mech.evaluation.judges.cli import main

main()
