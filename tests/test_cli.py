"""The command line's one logging set-up: progress on stderr, -q/-v and STUDY_LOG_LEVEL."""

from __future__ import annotations

import logging

from study import cli, config, logs


def test_quiet_verbose_and_the_environment_set_the_level(capsys, monkeypatch):
    progress, warning = logging.getLogger("study.compare"), logging.getLogger("study.tuning")
    monkeypatch.delenv(config.LOG_LEVEL_ENV, raising=False)
    cli.configure_logging()
    progress.info("progress line")
    warning.warning("a trial failed")
    assert capsys.readouterr().err == "progress line\na trial failed\n"  # plain lines

    cli.configure_logging(-1)  # -q
    progress.info("hidden")
    warning.warning("still shown")
    progress.debug("hidden too")
    assert capsys.readouterr().err == "still shown\n"

    cli.configure_logging(1)  # -v
    progress.debug("debug detail")
    assert capsys.readouterr().err == "debug detail\n"

    monkeypatch.setenv(config.LOG_LEVEL_ENV, "warning")
    cli.configure_logging()
    progress.info("hidden by the environment")
    assert capsys.readouterr().err == ""
    ours = [h for h in logging.getLogger("study").handlers if isinstance(h, logs._Stderr)]
    assert len(ours) == 1  # set up again, not stacked (pytest may add capture handlers)


def test_a_bad_log_level_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setenv(config.LOG_LEVEL_ENV, "LOUD")
    assert cli.main(["pipelines"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STUDY_LOG_LEVEL='LOUD' is not a log level" in err
    monkeypatch.delenv(config.LOG_LEVEL_ENV)
    cli.configure_logging()


def test_every_command_takes_quiet(capsys):
    assert cli.main(["pipelines", "-q"]) == 0
    assert "cnn_modern" in capsys.readouterr().out
