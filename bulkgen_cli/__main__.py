from bulkgen_cli.cli.main import main

main()
