"""A URL workdir is refused up front with a message naming the fix."""

import pytest

from attnlab.train import trainer


def test_url_workdir_is_refused(make_config):
  with pytest.raises(ValueError, match=r"workdir .*URL 'gs://bucket/run'.*gcsfuse"):
    trainer.train_and_evaluate(make_config(), "gs://bucket/run")
