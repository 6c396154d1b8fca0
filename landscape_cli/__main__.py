from landscape_cli.cli._app import main

main()
