"""Hydra finds this plugin in any installed package's `hydra_plugins` folder: it adds lenet's config folder to the
search path of every Hydra command in this environment, so `nnlab train model=lenet` finds lenet/conf/model/lenet.yaml
(Hydra's docs: "Config Search Path", SearchPathPlugin)."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class LeNetSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="lenet", path="pkg://lenet.conf")
