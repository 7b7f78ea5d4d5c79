"""The workdir is checked up front (a URL or a file is refused with a message naming the fix)
and the config is validated exactly once per train_and_evaluate call."""

import pytest

from attnlab.train import config_lib, trainer


def test_url_workdir_is_refused(make_config):
  with pytest.raises(trainer.WorkdirError,
                     match=r"workdir .*URL 'gs://bucket/run'.*gcsfuse"):
    trainer.train_and_evaluate(make_config(), "gs://bucket/run")


def test_file_workdir_is_refused(make_config, tmp_path):
  f = tmp_path / "file"
  f.write_text("")
  with pytest.raises(trainer.WorkdirError, match=r"is a file, not a directory"):
    trainer.train_and_evaluate(make_config(), str(f))
  with pytest.raises(trainer.WorkdirError, match=r"cannot create the workdir"):
    trainer.train_and_evaluate(make_config(), str(f / "sub"))


def test_config_is_validated_once(make_config, monkeypatch):
  calls = []
  real = config_lib.validate_config
  monkeypatch.setattr(config_lib, "validate_config", lambda c: calls.append(c) or real(c))
  with pytest.raises(trainer.WorkdirError):  # fails right after the validation
    trainer.train_and_evaluate(make_config(), "gs://bucket/run")
  assert len(calls) == 1
  with pytest.raises(trainer.WorkdirError):  # the caller validated already
    trainer.train_and_evaluate(make_config(), "gs://bucket/run", validate=False)
  assert len(calls) == 1
  bad = make_config(total_steps=0)
  with pytest.raises(config_lib.ConfigError, match="total_steps must be >= 1"):
    trainer.train_and_evaluate(bad, "gs://bucket/run")
