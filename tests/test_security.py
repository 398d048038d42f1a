"""Issue 41: secrets never shown, files never half-written or over-shared, process names unique."""

from __future__ import annotations

import pytest

from study import config

# (what the study may be given, what it may show): every form a parser reads as a secret
REDACTED = [
    ("postgresql://study:s3cr3t@db.example:5432/optuna",
     "postgresql://study:***@db.example:5432/optuna"),
    ("postgresql://study:c2Vj/cmV0+Lw==@db/optuna", "postgresql://study:***@db/optuna"),  # base64
    ("postgresql://:s3cr3t@db/optuna", "postgresql://:***@db/optuna"),  # empty user
    ("mysql+pymysql://u:p@ss@db:3306/optuna", "mysql+pymysql://u:***@db:3306/optuna"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("postgresql://study@db/optuna?sslmode=require&sslpassword=k3y",
     "postgresql://study@db/optuna?sslmode=require&sslpassword=***"),
    ("mysql://db/optuna?user=u&password=p4ss&ssl=1", "mysql://db/optuna?user=u&password=***&ssl=1"),
    ("https://mlflow.example/api?access_token=t0k3n&x=1", "https://mlflow.example/api?access_token=***&x=1"),
    ("https://h/x?client_secret=cs&api_key=ak&sig=5ig",
     "https://h/x?client_secret=***&api_key=***&sig=***"),
    ("https://acct.blob.core.windows.net/c?sv=2020&Sig=abc%2Bdef",
     "https://acct.blob.core.windows.net/c?sv=2020&Sig=***"),
    ("cannot open postgresql://u:pa/ss@h/db (FATAL: token=abc123 refused)",
     "cannot open postgresql://u:***@h/db (FATAL: token=*** refused)"),  # inside a message
    ("host=db user=study password=s3cr3t dbname=optuna",
     "host=db user=study password=*** dbname=optuna"),  # a libpq connection string
]
UNCHANGED = [
    "postgresql+psycopg://study@127.0.0.1/optuna?sslmode=require",
    "/tmp/optuna.journal",
    "http://127.0.0.1:5000",
    "sqlite:////tmp/study/mlflow.db",
    "https://mlflow.example/#/experiments/1?searchFilter=x",
    "cannot reach http://127.0.0.1:5000 (connection refused)",
]


@pytest.mark.parametrize("given, shown", REDACTED)
def test_redact_hides_every_secret_a_url_parser_would_read(given, shown):
    assert config.redact(given) == shown
    assert config.carries_secret(given)


@pytest.mark.parametrize("given", UNCHANGED)
def test_redact_leaves_urls_paths_and_messages_without_secrets_alone(given):
    assert config.redact(given) == given
    assert not config.carries_secret(given)
