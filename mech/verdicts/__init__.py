"""Stage 7, verdicts: bootstrap intervals over seeds x domains (`bootstrap`), the one rule that
turns an effect, its interval and a pre-set margin into `reproduced` / `not reproduced` /
`inconclusive` (`rule`), and the margin of every finding (`margins`). numpy and pandas only."""
