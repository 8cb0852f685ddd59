from mucrasp.cli import main

main()
