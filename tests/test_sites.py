"""Site profiles in cluster/: loaded, validated, overridden."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError, UnknownNameError
from pipeline.sites import available_sites, load_site


def test_local_profile_and_overrides():
    assert "local" in available_sites()
    site = load_site("local", {"n_workers": 3, "threads_per_worker": None})
    assert site.type == "local" and site.n_workers == 3 and site.threads_per_worker == 1


def test_unknown_site_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown site 'lxplus'; valid sites are: .*local"):
        load_site("lxplus")


def test_profile_with_unknown_key_is_rejected(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("type: local\nn_wrkers: 2\n")
    with pytest.raises(ConfigError, match=r"mine.yaml(.|\n)*n_wrkers: unknown key"):
        load_site(str(profile))
