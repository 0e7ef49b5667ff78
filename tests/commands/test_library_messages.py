"""The library logs; the CLI prints: a library message reaches stderr as one `actprune: ...` line while a
command runs, and the logger is left as it was afterwards."""

import logging

from actprune_compiler.commands.errors import library_messages


def test_library_messages_are_actprune_lines_on_stderr_while_a_command_runs(capsys):
    logger = logging.getLogger("actprune")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with library_messages():
        logger.info("note %s", 1)
        logger.warning("could not keep a copy of %s", "x.gguf")
        logger.debug("not shown")
    captured = capsys.readouterr()
    assert captured.err == "actprune: note 1\nactprune: could not keep a copy of x.gguf\n" and captured.out == ""
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    logger.info("after the command: the CLI prints nothing")  # INFO: below the default WARNING
    assert capsys.readouterr().err == ""
