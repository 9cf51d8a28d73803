"""`--version` on both commands names the installed dgsnet."""
import importlib.metadata

import pytest

from dgsnet.version import __version__


@pytest.mark.parametrize("main_module,prefix", [("dgsnet.cli", "dgsnet "), ("dgsnet_export.cli", "dgsnet-predict (dgsnet ")])
def test_version_flag(main_module, prefix, capsys):
    main = __import__(main_module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip().startswith(prefix + __version__)


def test_the_installed_distribution_is_this_version():
    assert importlib.metadata.version("dgsnet") == __version__
