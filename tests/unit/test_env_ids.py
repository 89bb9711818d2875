"""Environment ids are data: gymnasium's ``module:EnvId`` form, which imports ``module`` first, is refused before
anything is imported."""

import pytest

from engine.core.errors import UnknownEnvironmentError
from engine.env.pipelines import make_env


@pytest.mark.parametrize("env_id", ["plantedmodule:Pong-v4", "plantedmodule:", ":Pong-v4"])
def test_module_form_is_refused_without_importing_anything(env_id, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "plantedmodule.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownEnvironmentError, match="not a plain ALE id"):
        make_env(env_id)
    assert not marker.exists()


def test_a_plain_id_still_makes_its_game():
    env = make_env("Pong-v4")
    try:
        assert env.observation_space.shape == (210, 160, 3)
    finally:
        env.close()
