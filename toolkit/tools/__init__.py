"""Tools that keep the repository itself honest: ``docs`` (the README's and docs' figures,
regenerated from the artifacts behind them; each world gives its own generators)."""
