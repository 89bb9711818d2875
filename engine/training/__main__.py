from .a2c import main

main()
