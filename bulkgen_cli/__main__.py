from bulkgen_cli.cli import main

main()
