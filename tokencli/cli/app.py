"""The whole app, every command registered: for tests and tools that want all of it.

`tokencli` itself never imports this: `base.main()` registers only the command on the
line, because building every command's parser costs start-up time.
"""

from tokencli.cli.base import load_commands

app = load_commands()
