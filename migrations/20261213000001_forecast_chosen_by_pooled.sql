-- A series whose backtests cannot see its season (two seasons of history, less once a backtest
-- cuts a horizon off) gets the model the run chose for its longer series: chosen_by 'pooled'.
ALTER TABLE forecast_results DROP CONSTRAINT forecast_results_chosen_by_check;
ALTER TABLE forecast_results ADD CONSTRAINT forecast_results_chosen_by_check
    CHECK (chosen_by IN ('backtest', 'classifier', 'fallback', 'pooled'));
