from probes.sae.toy import main

main()
