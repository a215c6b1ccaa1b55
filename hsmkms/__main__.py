from hsmkms.cli import main

main()
