"""Every registered strategy runs through the shipped contract suite."""

import pytest

from toolkit.core.testing import StrategyContract
from toolkit.registry import STRATEGIES


@pytest.fixture(params=STRATEGIES.names())
def strategy_name(request):
    return request.param


class TestRegistered(StrategyContract):
    @pytest.fixture(autouse=True)
    def _pick(self, strategy_name):
        self.cls = STRATEGIES.get(strategy_name)

    def make_strategy(self):
        return self.cls()
