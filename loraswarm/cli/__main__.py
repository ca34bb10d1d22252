from loraswarm.cli import main

main()
