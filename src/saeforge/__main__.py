from saeforge.cli import run

run()
